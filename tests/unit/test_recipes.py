"""Shipped spaces and studies: valid against their task, found by name from any folder, shipped as package
data of `search` (no top-level `spaces` or `studies` in the wheel), living beside Hugging Face's `spaces`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tiny
from conftest import REPO

from search.cli import main
from search.config import load_study
from search.recipes import shipped_spaces, shipped_studies

TASK_OF_SPACE = {
    "lora-classification": ["classification"],
    "full-finetune": ["classification", "sft"],
    "lora-sft": ["sft"],
    "regression": ["regression"],
    "multilabel": ["multilabel"],
    "token-classification": ["token-classification"],
    "image-classification": ["image-classification"],
}


def test_every_shipped_space_is_known_here() -> None:
    assert sorted(shipped_spaces()) == sorted(TASK_OF_SPACE)
    assert sorted(shipped_studies()) == ["gsm8k", "quickstart"]


@pytest.mark.parametrize("space", sorted(TASK_OF_SPACE))
def test_shipped_space_validates_against_a_base_config_of_its_task(
    space: str, tmp_path: Path, bert_dir: Path, gpt2_dir: Path
) -> None:
    for task in TASK_OF_SPACE[space]:
        if task == "classification":
            base = tiny.classification_config(tmp_path, bert_dir)
        elif task == "image-classification":
            base = tiny.image_config(tmp_path, tiny.make_image_model(tmp_path / "resnet"))
        elif task != "sft":
            base = tiny.TASK_CONFIGS[task](tmp_path, bert_dir)
        else:
            base = tiny.sft_config(tmp_path, gpt2_dir)
        path = tiny.write_config(tmp_path / f"{space}-{task}.yaml", {"name": "s", "base": base, "space": space})
        cfg = load_study(path)  # every choice and bound is checked against the train config
        assert cfg.space.source == str(shipped_spaces()[space])
        sections = ("train", "peft", "task_options")
        assert cfg.space.params and all(p.name.split(".")[0] in sections for p in cfg.space.params)
        for param in cfg.space.params:
            if param.type == "float":
                assert param.low < param.high or param.low == param.high


def test_shipped_study_loads_by_name_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_study("quickstart")
    assert cfg.path == shipped_studies()["quickstart"]
    assert cfg.storage == f"sqlite:///{tmp_path / 'quickstart.db'}"  # outputs where the user runs
    assert cfg.output_dir == tmp_path / "runs" / "quickstart"
    assert cfg.base_config.task == "classification" and cfg.space.params
    assert cfg.base_config.peft.method == "lora"


def test_the_quickstart_holds_out_a_test_split_apart_from_train_and_validation() -> None:
    import json

    from search.testset import has_test_split

    cfg = load_study("quickstart")
    assert has_test_split(cfg.base_config) and cfg.base_config.data.test, "the quickstart shows a held-out test score"
    texts = {}
    for split in ("train", "validation", "test"):
        lines = Path(getattr(cfg.base_config.data, split)).read_text().splitlines()
        texts[split] = {json.loads(line)["text"] for line in lines}
    assert len(texts["test"]) == 372
    assert not texts["test"] & (texts["train"] | texts["validation"])  # never seen by the search
    assert "test.jsonl" in (REPO / "studies" / "data" / "sst2" / "SOURCE.md").read_text()  # its provenance


def test_the_gsm8k_study_optimises_exact_match_on_its_bundled_data(
    tmp_path: Path, llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As shipped, bar the model (the hub is out of reach here): a tiny local Llama. Its validation answers
    all end in `#### N` (the extraction is checked on each), and its held-out rows are apart from the rest."""
    import json

    from trainer.data import load_examples

    monkeypatch.chdir(tmp_path)
    cfg = load_study("gsm8k", [f"base.model={llama_dir}", "base.train.max_length=128"])
    assert cfg.metrics == ["exact_match"] and cfg.directions == ["maximize"]
    base = cfg.base_config
    assert base.task == "sft" and base.eval.metrics == ["exact_match"] and base.eval.extract == "gsm8k"
    examples = load_examples(base)  # refuses an extraction that finds no answer in some validation reference
    assert len(examples.validation) == 200 and len(examples.train) == 1000
    problems = {}
    for split in ("train", "validation", "test"):
        lines = Path(getattr(base.data, split)).read_text().splitlines()
        problems[split] = {json.loads(line)["instruction"] for line in lines}
    assert not problems["test"] & (problems["train"] | problems["validation"])
    assert not problems["validation"] & problems["train"]
    assert "<<" not in Path(base.data.train).read_text()  # calculator annotations removed, as SOURCE.md says
    assert "MIT" in (REPO / "studies" / "data" / "gsm8k" / "LICENSE").read_text()


def test_an_unknown_study_name_lists_the_shipped_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["status", "quikstart"]) == 2
    assert "did you mean 'quickstart'?" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_an_unknown_space_name_lists_the_shipped_ones(
    tmp_path: Path, bert_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    base = tiny.classification_config(tmp_path, bert_dir)
    path = tiny.write_config(tmp_path / "s.yaml", {"name": "s", "base": base, "space": "lora-clasification"})
    assert main(["status", str(path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'lora-classification'?" in err and "full-finetune" in err


def test_spaces_command_lists_each_shipped_space(capsys: pytest.CaptureFixture) -> None:
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    for name in shipped_spaces():
        line = next(line for line in out.splitlines() if line.strip().startswith(name + " "))
        assert len(line.split(name, 1)[1].strip()) > 10  # with a description
    assert "quickstart" in out


def _build_wheel(tmp: Path) -> Path:
    """`pip wheel . --no-deps` on a clean copy of the sources (no stale build/ folder)."""
    src = tmp / "src"
    for name in ("search", "trainer", "sftune", "spaces", "studies"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.db", "runs"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    try:
        import setuptools  # noqa: F401

        isolation = ["--no-build-isolation"]  # fast, offline: the setuptools installed here
    except ImportError:
        isolation = []
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", *isolation, "-w", str(tmp / "dist"), "-q"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shutil.rmtree(src)  # with the build/ and egg-info folders the build left there
    return next((tmp / "dist").glob("sftune-*.whl"))


def test_wheel_installs_no_spaces_or_studies_package_and_works_beside_hf_spaces(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"search", "trainer", "sftune"}  # import sftune: the API
    assert "search/_recipes/spaces/lora-classification.yaml" in names
    assert "search/_recipes/studies/data/sst2/train.jsonl" in names

    # A throwaway environment: the wheel alone (--no-deps), then this environment's packages after it
    # (a .pth written once pip is done, so pip never sees, or touches, the packages installed here).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # a checkout on it would count as installed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(py), "install", "-q"]
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, capture_output=True, env=env)
    # Hugging Face's `spaces` in the same environment (with httpx, what `import spaces` needs; not gradio).
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "spaces", "-d", str(tmp_path / "dl")],
        capture_output=True,
        text=True,
    )
    hf_spaces = probe.returncode == 0
    if hf_spaces:
        subprocess.run([*pip, "--no-deps", "spaces"], check=True, capture_output=True, env=env)
        subprocess.run([*pip, "httpx"], check=True, capture_output=True, env=env)
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def run(*args: str | Path) -> str:
        proc = subprocess.run([str(a) for a in args], cwd=elsewhere, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    assert "lora-classification" in run(venv / "bin" / "sftune", "spaces")
    module, root, storage = run(
        py,
        "-c",
        "import search, search.recipes as r, search.config as c; "
        "print(search.__file__); print(r.recipes_root()); "
        "print(c.load_study('quickstart').storage)",
    ).split()
    assert module.startswith(str(site)) and root == str(site / "search" / "_recipes")
    assert storage == f"sqlite:///{elsewhere / 'quickstart.db'}"
    if not hf_spaces:
        pytest.skip(f"cannot fetch Hugging Face's `spaces` from the package index: {probe.stderr.strip()[-300:]}")
    both = run(
        py,
        "-c",
        "import spaces, search.recipes as r; assert callable(spaces.GPU); "
        "print(spaces.__file__); print(sorted(r.shipped_spaces()))",
    )
    assert both.splitlines()[0].startswith(str(site / "spaces"))
    assert "lora-classification" in run(venv / "bin" / "sftune", "spaces")
