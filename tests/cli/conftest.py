"""Fixtures for the command-line tests: a directory with a user's model file, weights and data, and a runner that
calls ``python -m mixq`` in a subprocess (as a user would)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

NETS = textwrap.dedent('''
    import torch
    from torch import nn


    class SmallCNN(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.bn = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(width * 64, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.relu(self.bn(self.conv(x))), 1))


    def build():
        torch.manual_seed(0)
        return SmallCNN()


    def build_wide():
        return SmallCNN(width=12)


    def broken():
        raise RuntimeError("factory failed on purpose")


    def calib():
        g = torch.Generator().manual_seed(0)
        return [torch.rand(8, 1, 8, 8, generator=g) for _ in range(3)]


    def score(model):
        """Agreement of the model's top class with the float model's on fixed inputs (higher is better)."""
        x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            return (model(x).argmax(1) == build().eval()(x).argmax(1)).float().mean().item()


    def broken_score(model):
        raise KeyError("labels")


    def embedder():
        return nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 2))


    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            y = self.fc(x)
            return y * 2 if y.sum() > 0 else y - 1  # data-dependent control flow: runs, but cannot be exported


    def branchy():
        return Branchy()


    def bert_score(model):
        """Cosine similarity of the sentence embedding with the float model's (higher is better)."""
        import transformers
        ids = torch.randint(0, 100, (4, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = transformers.AutoModel.from_pretrained("bert", local_files_only=True).eval()(ids).pooler_output
            return torch.nn.functional.cosine_similarity(model(ids).pooler_output, ref).mean().item()
''')


def run_mixq(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m mixq ARGS`` in ``cwd``; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "mixq", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def user_dir(tmp_path_factory) -> Path:
    """nets.py (factories), w.pt (state_dict of build()), pickled.pt (a whole module), calib.npy, bad.npy."""
    root = tmp_path_factory.mktemp("user")
    (root / "nets.py").write_text(NETS)
    make = ("import numpy as np, torch, nets; "
            "torch.save(nets.build().state_dict(), 'w.pt'); "
            "torch.save({'model': nets.build(), 'epoch': 3}, 'pickled.pt'); "
            "rng = np.random.default_rng(0); "
            "np.save('calib.npy', rng.random((64, 1, 8, 8), dtype=np.float32)); "
            "np.save('bad.npy', rng.random((16, 1, 6, 6), dtype=np.float32))")
    subprocess.run([sys.executable, "-c", make], cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def hf_dirs(user_dir) -> Path:
    """In ``user_dir``: bert/, llama/ and gpt2/ (see hf_dirs.py), texts.txt (calibration lines), empty.txt (none),
    notok/ and gpt2notok/ (config.json and weights, no tokenizer) and noconfig/ (empty)."""
    import shutil

    pytest.importorskip("transformers")
    from tests.cli.hf_dirs import TEXTS, save_bert, save_gpt2, save_llama

    save_bert(user_dir / "bert")
    save_llama(user_dir / "llama")
    save_gpt2(user_dir / "gpt2")
    save_gpt2(user_dir / "gpt2notok", tokenizer=False)
    (user_dir / "texts.txt").write_text("\n".join(TEXTS) + "\n")
    (user_dir / "empty.txt").write_text("\n  \n")
    (user_dir / "notok").mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(user_dir / "bert" / name, user_dir / "notok" / name)
    (user_dir / "noconfig").mkdir()
    return user_dir


@pytest.fixture(scope="session")
def mixq_cli() -> Callable[..., subprocess.CompletedProcess]:
    return run_mixq


@pytest.fixture
def mixq_main(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """``mixq.cli.main(ARGS)`` in this process (no interpreter start-up), run from ``cwd``: (code, out, err)."""
    from mixq.cli import main

    def run(*args: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def quantized(user_dir) -> Path:
    """The static-int8 ONNX file of nets:build written by ``mixq quantize`` (once per session)."""
    proc = run_mixq("quantize", "--model", "nets:build", "--weights", "w.pt", "--mode", "static", "--calib",
                    "calib.npy", "--observer", "percentile", "--runtime-aware", "off", "--output", "cnn_int8.onnx",
                    cwd=user_dir)  # every layer int8, whatever this machine's kernel timings say
    assert proc.returncode == 0, proc.stderr[-3000:]
    return user_dir / "cnn_int8.onnx"
