"""kohaku.logs: the libraries' chatter goes to the log file, their real warnings to the
console as well, kohaku's own loggers are left alone, and everything is restored after."""

from __future__ import annotations

import io
import logging

from kohaku.logs import library_logs

TORCHVISION = ("`CLIPImageProcessor` requires torchvision (not installed); falling back to "
               "`CLIPImageProcessorPil` for backward compatibility.")  # fmt: skip


def test_library_chatter_to_the_file_real_warnings_to_the_console(tmp_path, capfd):
    from lycoris.logging import logger as lycoris  # prints INFO lines to stdout in colour
    from transformers.utils import logging as hf

    before, bars = lycoris.handlers[:], hf.is_progress_bar_enabled()
    # LyCORIS' handler holds the sys.stdout of the moment it was imported (under pytest, maybe
    # an earlier test's capture, closed since): give it a stream of this test's own
    own = io.StringIO()
    streams = [(h, h.setStream(own)) for h in before if isinstance(h, logging.StreamHandler)]
    log = tmp_path / "logs" / "train.log"
    with library_logs(log):
        lycoris.info("Bypass mode is enabled")
        hf.get_logger("transformers.utils.import_utils").warning(TORCHVISION)
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: no module 'kernels'"
        )
        hf.get_logger("transformers.modeling_utils").warning("some weights were not used")
        assert not hf.is_progress_bar_enabled()
    out, err = capfd.readouterr()
    text = log.read_text()
    for line in ("INFO LyCORIS: Bypass mode", "requires torchvision", "kernels-community",
                 "some weights were not used"):  # fmt: skip
        assert line in text
    assert "Bypass mode" not in out + err and "torchvision" not in out + err
    assert "kernels" not in out + err
    assert err == "WARNING transformers.modeling_utils: some weights were not used\n"
    assert lycoris.handlers == before and hf.is_progress_bar_enabled() == bars
    lycoris.info("after")  # LyCORIS' own handler again, not the file
    assert "after" in own.getvalue() and "after" not in log.read_text()
    for handler, stream in streams:
        handler.setStream(stream)
