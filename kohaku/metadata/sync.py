"""Keep the metadata store current from the danbooru API: each sync makes a new snapshot.

Reads: the latest snapshot, and `<api_url>/posts.json?limit=200&page=a<id>&tags=status:any`
pages through `kohaku.fetch.Fetcher` (one request at a time per host, a rate limit,
exponential backoff, `Retry-After`, an identifying User-Agent naming the account when one
is given, login + API key from the environment as HTTP basic auth, the key never logged).
Paging starts `recent_window` ids below the highest known id, so one upward pass re-fetches
recent posts (fav_count, tags, deletions) and then fetches every new post.
Writes: a journal `<store>/.sync-<parent snapshot>/` (`plan.json`, `policy.jsonl`: one line
per start with the effective HTTP policy, also logged, `pages/page-NNNNNN.json` as
fetched, `done` once an empty page ends the pass), then the changed partitions, the new
snapshot and `LATEST` (last), then removes the journal. A sync killed at any point resumes
from its journal and ends with the same snapshot; until `LATEST` moves, the previous
snapshot stays the latest.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from kohaku.errors import ConfigError
from kohaku.fetch import Fetcher, FetchPolicy, FetchResult
from kohaku.metadata.config import SyncConfig
from kohaku.metadata.merge import merge_pages
from kohaku.metadata.snapshot import PARTS, latest_id, publish, read_snapshot
from kohaku.stage import atomic_write_bytes, atomic_write_text, pid_alive

log = logging.getLogger(__name__)
DONE, PLAN, POLICY = "done", "plan.json", "policy.jsonl"


class SyncError(ConfigError):
    """The API could not be read (unreachable, refused, malformed); the previous snapshot
    stays the latest and a rerun resumes from the journal. `retryable`: a later try may
    succeed (network, server errors), unlike a refused login or a malformed page."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class SyncPlan(BaseModel):
    """`plan.json` of a journal: what this sync fetches, fixed when it starts."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    parent: str = Field(description="the snapshot the sync starts from")
    after: int = Field(description="the first page is `page=a<after>`")
    max_known: int = Field(description="the parent's highest post id")
    request: str = Field(description="api_url, tags and page limit; a change restarts")


class SyncResult(BaseModel):
    """What a sync did; `snapshot` is the new latest snapshot id."""

    model_config = ConfigDict(frozen=True)
    snapshot: str
    parent: str
    pages: int
    counts: dict
    seconds: float
    timings: dict = {}
    policy: dict = Field({}, description="the HTTP policy it ran with (no secret)")


def sync_metadata(cfg: SyncConfig) -> SyncResult:
    """Fetch (or resume fetching) the pages since the parent's window, merge them into a
    new snapshot and make it the latest."""
    t0, store = time.perf_counter(), Path(cfg.store)
    _check_host(cfg)
    with store_lock(store):
        parent = read_snapshot(store)
        journal = _open_journal(store, cfg, plan_for(parent, cfg))
        plan = SyncPlan.model_validate_json((journal / PLAN).read_text())
        with _fetcher(cfg) as fetcher:
            announce(fetcher.policy, journal)
            pages = fetch_pages(fetcher, cfg, journal, plan)
        t1 = time.perf_counter()
        snap = merge_pages(store, parent, sorted((journal / "pages").glob("page-*.json")),
                           plan.after, plan.max_known, cfg)  # fmt: skip
        publish(store, snap)
        shutil.rmtree(journal, ignore_errors=True)
    t2 = time.perf_counter()
    counts, seconds = snap.origin["sync"], round(t2 - t0, 2)
    log.info("sync: snapshot %s (parent %s): %s", snap.id, parent.id, counts)
    timings = {"fetch": round(t1 - t0, 3), "merge_publish": round(t2 - t1, 3)}
    return SyncResult(snapshot=snap.id, parent=parent.id, pages=pages, counts=counts,
                      seconds=seconds, timings=timings,
                      policy=fetcher.policy.model_dump())  # fmt: skip


def announce(policy: FetchPolicy, journal: Path) -> None:
    """Say what this sync sends before its first request (a user adding a `[fetch]` line
    sees the rate they get), and append it to the journal: a resumed sync shows each
    start's policy. The policy holds no secret."""
    log.info("sync: %s", policy.describe())
    line = json.dumps({"started_at": time.time(), "pid": os.getpid(), **policy.model_dump()})
    with open(journal / POLICY, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def plan_for(parent, cfg: SyncConfig) -> SyncPlan:
    request = f"{cfg.api_url.rstrip('/')} tags={cfg.tags!r} limit={cfg.page_limit}"
    return SyncPlan(parent=parent.id, after=max(0, parent.max_post_id - cfg.recent_window),
                    max_known=parent.max_post_id, request=request)  # fmt: skip


def fetch_pages(fetcher: Fetcher, cfg: SyncConfig, journal: Path, plan: SyncPlan) -> int:
    """Page upward from the journal's last page (or `plan.after`) until an empty page;
    each page is written to the journal before the next is requested."""
    pages = journal / "pages"
    pages.mkdir(exist_ok=True)
    done = sorted(pages.glob("page-*.json"))
    cursor = max((p["id"] for p in json.loads(done[-1].read_bytes())), default=plan.after) \
        if done else plan.after  # fmt: skip
    n = len(done)
    if done:
        log.info("sync: resuming after %d journaled pages, from id %d", n, cursor)
    while not (journal / DONE).is_file():
        body, posts = fetch_page(fetcher, cfg, cursor)
        if not posts:
            atomic_write_text(journal / DONE, f"{n}\n")
            break
        atomic_write_bytes(pages / f"page-{n:06d}.json", body)
        cursor, n = max(p["id"] for p in posts), n + 1
        if n % 50 == 0:
            log.info("sync: %d pages, at id %d", n, cursor)
    return n


def page_url(cfg: SyncConfig, cursor: int) -> str:
    query = urlencode({"limit": cfg.page_limit, "page": f"a{cursor}", "tags": cfg.tags})
    return f"{cfg.api_url.rstrip('/')}/posts.json?{query}"


def fetch_page(fetcher: Fetcher, cfg: SyncConfig, cursor: int) -> tuple[bytes, list[dict]]:
    """One page above `cursor`: its body and posts, checked; failures raise SyncError."""
    url = page_url(cfg, cursor)
    res = fetcher.fetch(url)
    if not res.ok:
        refused = (res.error or "").startswith(("HTTP 401", "HTTP 403"))
        raise SyncError(_failure(res, cfg), retryable=not refused)
    try:
        posts = json.loads(res.data)
    except ValueError as exc:
        raise SyncError(f"{url} returned malformed JSON ({exc}); is sync.api_url a danbooru "
                        "API? The previous snapshot stays the latest") from None  # fmt: skip
    _check_page(posts, cursor, url)
    return res.data, posts


def _check_page(posts: object, cursor: int, url: str) -> None:
    if not isinstance(posts, list):
        brief = json.dumps(posts)[:200]
        raise SyncError(f"{url} returned {brief} instead of a list of posts")
    for post in posts:
        pid = post.get("id") if isinstance(post, dict) else None
        if not isinstance(pid, int) or pid <= cursor:
            raise SyncError(f"{url} returned a post with id {pid!r}, not an id above {cursor}: "
                            "the server does not page like danbooru's page=a<id>")  # fmt: skip


def _failure(res: FetchResult, cfg: SyncConfig) -> str:
    url = res.url.split("?")[0]
    # the fetcher reports permanent HTTP failures as "HTTP <code>" with no status
    if res.http_status in (401, 403) or (res.error or "").startswith(("HTTP 401", "HTTP 403")):
        names = f"${cfg.fetch.login_env} / ${cfg.fetch.api_key_env}"
        hint = f"check the login and API key in {names}" if cfg.fetch.api_key_env else \
            "this API needs a login: set sync.fetch.login_env and api_key_env"  # fmt: skip
        return f"{url}: the API refused the request ({res.error}); {hint}"
    return (f"cannot fetch {url}: {res.error}; check sync.api_url and the network (the "
            "previous snapshot stays the latest; a rerun resumes from the journal)")  # fmt: skip


def _check_host(cfg: SyncConfig) -> None:
    host = urlsplit(cfg.api_url).hostname or ""
    if host not in cfg.fetch.allowed_hosts:
        raise ConfigError(f"sync.api_url host {host!r} is not in sync.fetch.allowed_hosts "
                          f"{cfg.fetch.allowed_hosts}")  # fmt: skip


@contextmanager
def _fetcher(cfg: SyncConfig) -> Iterator[Fetcher]:
    try:
        fetcher = Fetcher(cfg.fetch)
    except ValueError as exc:  # credentials named but not set; the message names the variables
        raise ConfigError(str(exc)) from None
    with fetcher:
        yield fetcher


def _open_journal(store: Path, cfg: SyncConfig, plan: SyncPlan) -> Path:
    """The journal of a sync from `plan.parent`: reused when it was started with the same
    request, else (re)created; journals of older parents and dead writers' temp files go."""
    for old in store.glob(".sync-*"):
        if old.is_dir() and old.name != f".sync-{plan.parent}":
            shutil.rmtree(old, ignore_errors=True)
    for tmp in (store / PARTS).glob("*/.*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
    journal = store / f".sync-{plan.parent}"
    if (journal / PLAN).is_file():
        old = SyncPlan.model_validate_json((journal / PLAN).read_text())
        if old == plan:
            return journal
        log.info("sync: the journal was started with other settings; starting over")
        shutil.rmtree(journal)
    journal.mkdir(parents=True, exist_ok=True)
    atomic_write_text(journal / PLAN, plan.model_dump_json(indent=1))
    return journal


@contextmanager
def store_lock(store: Path) -> Iterator[None]:
    """One sync per store at a time (a lock file holding the pid; a dead holder's is taken)."""
    if latest_id(store) is None:
        read_snapshot(store)  # raises the "no snapshot yet" error
    path = store / ".sync.lock"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            pid = path.read_text().strip()
            if pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
                raise ConfigError(f"another sync (pid {pid}) is running on {store}") from None
            path.unlink(missing_ok=True)
    else:
        raise ConfigError(f"cannot take the sync lock {path}")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
