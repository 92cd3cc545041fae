"""The files of docker/ and deployments/prefect.yaml, checked without Docker (it cannot
run here; the images are not built in CI): hadolint on both Dockerfiles, the compose
services and what they build, and every prefect.yaml deployment's flow and work pool."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def test_dockerfiles_pass_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    files = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda"]
    out = subprocess.run([hadolint, "--config", DOCKER / "hadolint.yaml", *files],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_has_the_server_postgres_and_both_workers():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "server", "worker-cpu", "worker-gpu"}
    url = services["server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert url.startswith("postgresql+asyncpg://") and "@postgres:" in url
    for name, dockerfile, pool in (("worker-cpu", "Dockerfile.cpu", "kohaku-cpu"),
                                   ("worker-gpu", "Dockerfile.cuda", "kohaku-gpu")):  # fmt: skip
        build = services[name]["build"]
        context = (DOCKER / build["context"]).resolve()
        assert (context / build["dockerfile"]) == DOCKER / dockerfile
        text = (DOCKER / dockerfile).read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):  # everything the image copies exists
                assert all((context / src).exists() for src in line.split()[1:-1]), line
        assert f'"--pool", "{pool}"' in text
        assert services[name]["environment"]["PREFECT_API_URL"] == "http://server:4200/api"
    assert "gpu" in str(services["worker-gpu"]["deploy"])


def test_prefect_yaml_deploys_every_flow_to_its_pool():
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    pools = {}
    for dep in spec["deployments"]:
        path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        pools[f"{flow.name}/{dep['name']}"] = dep["work_pool"]["name"]
    assert pools == {
        "pipeline/kohaku": "kohaku-gpu", "train/kohaku": "kohaku-gpu",
        "evaluate/kohaku": "kohaku-gpu", "build-dataset/kohaku": "kohaku-cpu",
        "images/kohaku": "kohaku-cpu", "merge/kohaku": "kohaku-cpu",
        "build-dataset/weekly-rebuild": "kohaku-cpu", "sync-metadata/daily": "kohaku-cpu",
    }  # fmt: skip
    rebuild = next(d for d in spec["deployments"] if d["name"] == "weekly-rebuild")
    assert rebuild["schedules"] == [{"cron": "0 3 * * 1", "timezone": "UTC"}]
