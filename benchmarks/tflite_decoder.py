"""A Llama-style decoder (hidden 1024, the LLM benchmark's weight-dominated model) on LiteRT: mixq int4 GPTQ
``.tflite`` vs LiteRT fp32 vs litert-torch's own int4 recipe for generative models (what ``export_hf``'s
``quantize_model`` does with the recipe name ``dynamic_wi4b64_afp32``: ai-edge-quantizer's min-max int4 in blocks
of 64 on the fp32 file; ``export_lib`` itself does not import next to transformers 5.25, so its three lines are
repeated here).

Per variant: file size, decode-step time (one token on a cache of ``--cache`` positions, at position
``--position``, variants interleaved round by round; XNNPACK, 2 threads), prefill time, and greedy-token agreement
of ``generate_tflite`` with the PyTorch model the file stands for (mixq's simulation for mixq's file, quantized for
LiteRT: blockwise scales in bfloat16 and activations rounded per row as its kernels do; fp32 for the others) over
a few prompts.

    PYTHONPATH=src python benchmarks/tflite_decoder.py [--out benchmarks/results] [--trained-only]

The weights are random (as in the LLM benchmark's speed part): only speed and size are measured on them. Their
logits are nearly flat, so last-bit float differences flip greedy choices there; greedy agreement is measured
again on a trained model whose next tokens are not ties (``trained_agreement``: the LLM benchmark's byte-level
Llama, hidden 128, trained once and cached under ``benchmarks/.cache``), and that is the result that counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from llm_latency import BIG, big_model  # noqa: E402

import mixq  # noqa: E402
from mixq.export.tflite.decoder_run import TFLiteDecoderSession  # noqa: E402

GROUP = 64  # divides every K of both models (1024, 2816; 128, 384): LiteRT's blockwise int4 needs that
TRAINED_STEPS = 1500  # bench_llm.py's default: its cached model is reused
PEER_RECIPE = "dynamic_wi4b64_afp32"


def _machine() -> dict[str, Any]:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return {"cpu_flags": [f for f in wanted if f in flags], "cores": os.cpu_count(), "load": os.getloadavg()}


def _prompts(count: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (1, length), generator=gen) for _ in range(count)]


def build(tmp: Path, cache: int, prefill: int, method: str = "gptq"
          ) -> tuple[dict[str, Path], dict[str, torch.nn.Module], dict, dict[str, str]]:
    """The three files and the PyTorch model each stands for; export seconds; the variants whose export failed
    (name -> the error's first line: reported, not fatal)."""
    fp32 = big_model()
    calib = _prompts(4, 64, seed=1)
    start = time.perf_counter()
    int4 = mixq.quantize(big_model(), "weight_only", bits=4, group_size=GROUP, method=mixq.WeightMethod(method),
                         calib_data=calib, runtime="litert", progress=False)  # computes as LiteRT's kernels do
    seconds = {f"{method}_quantize": time.perf_counter() - start}
    print(f"{method.upper()} w4 g{GROUP}: {seconds[f'{method}_quantize']:.0f} s", flush=True)
    int4_name = f"mixq_int4_{method}"
    paths, failed = {}, {}
    for name, model in (("fp32", fp32), (int4_name, int4)):
        start = time.perf_counter()
        try:
            paths[name] = mixq.export_decoder_tflite(model, tmp / f"{name}.tflite", cache_len=cache,
                                                     prefill_len=prefill)
        except mixq.ExportError as err:
            failed[name] = str(err).splitlines()[0]
            print(f"{name}: export refused: {failed[name]}", flush=True)
            continue
        seconds[f"export_{name}"] = time.perf_counter() - start
        print(f"exported {name}: {paths[name].stat().st_size / 1e6:.1f} MB", flush=True)
    if "fp32" in paths:
        start = time.perf_counter()
        peer = tmp / f"litert_{PEER_RECIPE}.tflite"
        litert_recipe(paths["fp32"], peer)
        seconds["litert_recipe"] = time.perf_counter() - start
        paths[f"litert_{PEER_RECIPE}"] = peer
    refs = {"fp32": fp32, int4_name: int4, f"litert_{PEER_RECIPE}": fp32}
    return paths, refs, seconds, failed


def litert_recipe(source: Path, target: Path) -> None:
    """litert-torch's ``export_lib.quantize_model(source, PEER_RECIPE)``, written to ``target``."""
    from ai_edge_quantizer import quantizer, recipe

    qt = quantizer.Quantizer(str(source))
    qt.load_quantization_recipe(getattr(recipe, PEER_RECIPE)())
    qt.quantize().export_model(str(target), overwrite=True)


def top2_gap(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """How far apart the PyTorch model's two largest next-token logits after ``ids`` are, in logit standard
    deviations (a random model's are nearly tied: any rounding flips them)."""
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    top = torch.topk(logits, 2).values
    return float((top[0] - top[1]) / logits.std())


def path_gaps(model: torch.nn.Module, ids: torch.Tensor, new: int) -> list[float]:
    """``top2_gap`` at each of the ``new`` greedy steps of ``model`` after ``ids`` (one forward of the whole
    sequence): how far from a tie each next-token choice is."""
    seq = mixq.generate_torch(model, ids, new)
    with torch.no_grad():
        logits = model(seq).logits[0, ids.shape[1] - 1:-1]
    top = torch.topk(logits, 2).values
    return ((top[:, 0] - top[:, 1]) / logits.std(-1)).tolist()


def generate_without_cache(model: torch.nn.Module, ids: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy tokens of ``model`` recomputing the whole sequence at each step: what ``generate_torch`` computes,
    in another float summation order (attention over the full sequence instead of the cache)."""
    seq = ids
    with torch.no_grad():
        for _ in range(new):
            seq = torch.cat([seq, model(seq).logits[:, -1:].argmax(-1)], dim=1)
    return seq


def _equal_prefix(want: torch.Tensor, got: torch.Tensor) -> int:
    diff = (want != got).nonzero()
    return int(diff[0]) if len(diff) else len(want)


def agreement(paths: dict[str, Path], refs: dict[str, torch.nn.Module], prompts: list[torch.Tensor],
              new: int) -> dict[str, dict[str, Any]]:
    """Greedy tokens of each file vs its PyTorch model: prompts fully equal, new tokens equal before the first
    difference (averaged), and the PyTorch model's top-2 gap (``top2_gap``) where each prompt parts. For scale,
    ``self_prompts_equal``: the prompts on which the PyTorch model generates the same tokens without its cache (the
    same arithmetic in another float order), the agreement last-bit float differences alone leave."""
    out = {}
    for name, path in paths.items():
        session = TFLiteDecoderSession(path)
        same, self_same, prefix, gaps = 0, 0, [], []
        for ids in prompts:
            want = mixq.generate_torch(refs[name], ids, new)[0, ids.shape[1]:]
            got = mixq.generate_tflite(session, ids, new)[0, ids.shape[1]:]
            prefix.append(_equal_prefix(want, got))
            same += int(prefix[-1] == new)
            self_same += int(_equal_prefix(want, generate_without_cache(refs[name], ids, new)[0, ids.shape[1]:])
                             == new)
            if prefix[-1] < new:
                gaps.append(top2_gap(refs[name], torch.cat([ids[0], want[:prefix[-1]]])[None]))
        out[name] = {"prompts_equal": same, "prompts": len(prompts), "mean_equal_prefix": float(np.mean(prefix)),
                     "new_tokens": new, "parting_top2_gaps": gaps, "self_prompts_equal": self_same}
        print(f"{name}: {same}/{len(prompts)} prompts generate the same {new} tokens (the PyTorch model without its "
              f"cache: {self_same}/{len(prompts)})", flush=True)
    return out


def trained_agreement(tmp: Path, *, steps: int = TRAINED_STEPS, prompts: int = 8, prompt_len: int = 32,
                      new: int = 32, method: str = "gptq") -> dict[str, Any]:
    """Greedy agreement (``agreement``) of the fp32 and int4 files of the LLM benchmark's trained byte-level Llama
    (``llm_model.train``, cached as ``bench_llm.py`` caches it) on ``prompts`` held-out windows of ``prompt_len``
    bytes; int4 quantized as the random model is (``GROUP``, ``method``, calibrated on training bytes, for LiteRT)."""
    from llm_model import corpus, train, windows

    train_data, held = corpus()
    model, info = train(train_data, steps, HERE / ".cache" / f"byte_llama_128x4_{steps}.pt")
    calib = list(windows(train_data, 16, seed=2).split(8))
    int4 = mixq.quantize(model, "weight_only", bits=4, group_size=GROUP, method=mixq.WeightMethod(method),
                         calib_data=calib, runtime="litert", progress=False)
    name = f"mixq_int4_{method}"
    paths = {k: mixq.export_decoder_tflite(m, tmp / f"trained_{k}.tflite", cache_len=prompt_len + new,
                                           prefill_len=prompt_len) for k, m in (("fp32", model), (name, int4))}
    ids = [w[None, :prompt_len] for w in windows(held, prompts, seed=3)]
    agree = agreement(paths, refs := {"fp32": model, name: int4}, ids, new)
    for k, v in agree.items():
        gaps = [g for one in ids for g in path_gaps(refs[k], one, new)]
        v["path_top2_gap_median"], v["path_top2_gap_min"] = float(np.median(gaps)), float(min(gaps))
    c = model.config
    return {"model": {"hidden": c.hidden_size, "layers": c.num_hidden_layers, "intermediate": c.intermediate_size,
                      "heads": c.num_attention_heads}, "train": info, "steps": steps, "prompt_len": prompt_len,
            "group_size": GROUP, "method": method, "variants": agree}


def timing(paths: dict[str, Path], position: int, rounds: int, steps: int, threads: int) -> dict[str, dict]:
    """Median decode-step and prefill ms, variants interleaved round by round."""
    sessions = {k: TFLiteDecoderSession(p, threads) for k, p in paths.items()}
    rng = np.random.default_rng(0)
    history = rng.integers(0, 256, position).tolist()
    chunk = rng.integers(0, 256, next(iter(sessions.values())).prefill_len).tolist()
    times: dict[str, dict[str, list[float]]] = {k: {"decode": [], "prefill": []} for k in sessions}
    for s in sessions.values():
        s.prefill(history)
    for _ in range(rounds):
        for k, s in sessions.items():
            s.position = position
            s.decode(1)  # warm-up
            start = time.perf_counter()
            for _ in range(steps):
                s.position = position
                s.decode(1)
            times[k]["decode"].append((time.perf_counter() - start) * 1e3 / steps)
            start = time.perf_counter()
            s.position = 0
            s.prefill(chunk)
            times[k]["prefill"].append((time.perf_counter() - start) * 1e3)
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in times.items()}


def run_decoder(out: Path | None = None, *, cache: int = 256, prefill: int = 32, position: int = 128,
                rounds: int = 7, steps: int = 8, threads: int = 2, prompts: int = 4, new: int = 24,
                method: str = "gptq", trained_steps: int = TRAINED_STEPS, random: bool = True) -> dict:
    """The whole decoder comparison; writes ``tflite_decoder.{json,md}`` under ``out`` when given. The random
    model's part is left out with ``random=False``, the trained model's with ``trained_steps=0``."""
    with tempfile.TemporaryDirectory() as tmp:
        trained = trained_agreement(Path(tmp), steps=trained_steps, method=method) if trained_steps else None
        result = {"trained": trained, "method": method, "group_size": GROUP, "machine": _machine()}
        if random:
            result.update(_run_random(Path(tmp), cache, prefill, position, rounds, steps, threads, prompts, new,
                                      method))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tflite_decoder.json").write_text(json.dumps(result, indent=2))
        (out / "tflite_decoder.md").write_text(markdown(result))
    return result


def _run_random(tmp: Path, cache: int, prefill: int, position: int, rounds: int, steps: int, threads: int,
                prompts: int, new: int, method: str) -> dict:
    """The random hidden-1024 model's files: size, speed and (near-tie) greedy agreement."""
    paths, refs, seconds, failed = build(tmp, cache, prefill, method)
    sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    agree = agreement(paths, refs, _prompts(prompts, 16), new)
    speed = timing(paths, position, rounds, steps, threads)
    result = {"model": BIG, "vocab": 256, "cache_len": cache, "prefill_len": prefill, "position": position,
              "group_size": GROUP, "method": method, "threads": threads, "rounds": rounds, "machine": _machine(),
              "seconds": seconds, "variants": {k: {"mb": sizes[k], **speed[k], **agree[k]} for k in paths},
              "failed": failed}
    fp32 = result["variants"].get("fp32")
    for v in result["variants"].values():
        if fp32 is not None:
            v["decode_vs_fp32"], v["size_vs_fp32"] = v["decode"] / fp32["decode"], v["mb"] / fp32["mb"]
    return result


def _gaps(variant: dict) -> str:
    gaps = variant.get("parting_top2_gaps")
    return f"; parted where its top-2 logits were {', '.join(f'{g:.3f}' for g in gaps)} std apart" if gaps else ""


def trained_markdown(trained: dict) -> list[str]:
    """The trained model's greedy-agreement table (``trained_agreement``)."""
    m, first = trained["model"], next(iter(trained["variants"].values()))
    how = (f"trained {trained['steps']} steps" if "loaded_from" not in trained["train"]
           else f"trained {trained['steps']} steps, loaded from the cache")
    lines = [f"Greedy tokens on a trained model (the result the done-when line reads): the LLM benchmark's byte-level "
             f"Llama (hidden {m['hidden']}, {m['layers']} layers, intermediate {m['intermediate']}, {m['heads']} "
             f"heads; {how}), int4 {trained['method']} in groups of {trained['group_size']} quantized for LiteRT; "
             f"{first['prompts']} held-out prompts of {trained['prompt_len']} bytes, {first['new_tokens']} new "
             f"tokens each, cache {trained['prompt_len'] + first['new_tokens']} positions.", "",
             "| variant | greedy tokens equal to its PyTorch model | that model without its cache | its top-2 logit "
             "gap along its greedy tokens, std: median (min) |", "|---|---|---|---|"]
    for name, v in trained["variants"].items():
        lines.append(f"| {name} | {v['prompts_equal']}/{v['prompts']} prompts x {v['new_tokens']} tokens (mean "
                     f"equal prefix {v['mean_equal_prefix']:.1f}){_gaps(v)} | {v['self_prompts_equal']}/"
                     f"{v['prompts']} | {v['path_top2_gap_median']:.3f} ({v['path_top2_gap_min']:.3f}) |")
    return lines


def markdown(result: dict, command: str = "PYTHONPATH=src python benchmarks/tflite_decoder.py") -> str:
    lines = ["# Llama-style decoder on LiteRT (benchmarks/tflite_decoder.py)", ""]
    if result.get("trained"):
        lines += [*trained_markdown(result["trained"]), ""]
    if "variants" not in result:
        load = tuple(round(x, 1) for x in result["machine"]["load"])
        return "\n".join([*lines, f"Command: `{command}`; load {load}."]) + "\n"
    m = result["model"]
    lines += [
        f"Speed and size, random weights: hidden {m['hidden']}, {m['layers']} layers, intermediate "
        f"{m['intermediate']}, {m['heads']} heads, vocab {result['vocab']}; cache {result['cache_len']} positions, "
        f"prefill {result['prefill_len']} tokens; decode step at position {result['position']}; XNNPACK "
        f"{result['threads']} threads, median of {result['rounds']} interleaved rounds. CPU flags "
        f"{result['machine']['cpu_flags']}, {result['machine']['cores']} cores shared, load "
        f"{tuple(round(x, 1) for x in result['machine']['load'])}.",
        f"Command: `{command}`.", "",
        "| variant | file MB | x fp32 | decode ms | x fp32 | prefill ms | greedy tokens equal to its PyTorch model | "
        "that model without its cache |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['mb']:.1f} | {v.get('size_vs_fp32', float('nan')):.3f} | {v['decode']:.2f} | "
                     f"{v.get('decode_vs_fp32', float('nan')):.2f} | {v['prefill']:.1f} | {v['prompts_equal']}/"
                     f"{v['prompts']} prompts x {v['new_tokens']} tokens (mean equal prefix "
                     f"{v['mean_equal_prefix']:.1f}){_gaps(v)} | {v.get('self_prompts_equal', '-')}/{v['prompts']} |")
    for name, why in result.get("failed", {}).items():
        lines.append(f"| {name} | export refused: {why} | | | | | | |")
    lines += ["", "The last column: prompts on which the PyTorch model generates the same tokens recomputing the "
              "whole sequence each step (the same arithmetic, another float summation order). With random weights "
              "the logits are nearly flat, and a model that rounds activations per row (mixq's int4, quantized "
              "for LiteRT) turns last-bit float differences into percent-level logit differences through rounding "
              "ties, so its greedy tokens part from themselves at near-ties; a file, whose float operators differ "
              "from PyTorch's in the last bit, parts from it at such ties too. Hence greedy agreement is read on "
              "the trained model above."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trained-steps", type=int, default=TRAINED_STEPS,
                        help="training steps of the trained model (cached per count; fewer train faster; 0 skips it)")
    parser.add_argument("--trained-only", action="store_true", help="leave out the random hidden-1024 model")
    args = parser.parse_args()
    result = run_decoder(None, rounds=args.rounds, trained_steps=args.trained_steps, random=not args.trained_only)
    text = markdown(result, " ".join(["PYTHONPATH=src python benchmarks/tflite_decoder.py", *sys.argv[1:]]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tflite_decoder.json").write_text(json.dumps(result, indent=2))
    (args.out / "tflite_decoder.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
