"""The merge flow against a real local Prefect API."""

from __future__ import annotations

from safetensors.torch import load_file

from tests.download.test_flow import artifacts


def test_merge_flow(prefect_api, tiny_files, tmp_path):
    from flows.merge import merge

    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'output = "out.safetensors"\ndtype = "fp32"\n'
                      f'expression = "0.25 * m0 + 0.75 * m1"\n[models]\n'
                      f'm0 = "{tiny_files["m0"]}"\nm1 = "{tiny_files["m1"]}"\n')  # fmt: skip
    state = merge(recipe, return_state=True)
    result = state.result()
    out = load_file(result["output"])
    a, b = load_file(str(tiny_files["m0"])), load_file(str(tiny_files["m1"]))
    key = next(k for k in out if k.endswith("proj_in.weight"))
    assert (out[key] - (0.25 * a[key] + 0.75 * b[key])).abs().max() < 1e-6
    found = artifacts(state.state_details.flow_run_id)
    assert "0.25 * m0" in found["merge-result"].data
