"""One cold start, in a fresh process: import, load, every weight resident, first result.

Run by bench/python/coldstart.py; prints one JSON line. Times (seconds, perf_counter):
  import_s  torch + transformers (+ stasis) imported
  ready_s   from the end of the imports until every weight is resident (every page of
            every parameter and buffer touched, for both loaders: from_pretrained maps the
            safetensors file lazily, and stasis has checked every byte)
  first_s   from ready until the first forward's output is on the host (torch.compile,
            when asked, is paid here)
"""

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402


def touch(model, torch):
    """Reads one byte of every page of every parameter and buffer."""
    seen = set()
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen or t.numel() == 0:
            continue
        seen.add(t.data_ptr())
        flat = t.detach().reshape(-1).view(torch.uint8) if t.is_contiguous() else t.detach().contiguous().view(-1).view(torch.uint8)
        total += int(flat[::4096].sum())
    return total


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--loader", choices=["hf", "stasis"], required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--image")
    p.add_argument("--class-name", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--input", required=True, help="JSON: {name: nested list of ints}")
    p.add_argument("--out", required=True, help="where the first output is saved")
    a = p.parse_args()

    import torch
    import transformers

    if a.loader == "stasis":
        import stasis
        import stasis.transformers
    # transformers imports a model's module on first use of its class: an import, paid
    # here by both loaders.
    cls = getattr(transformers, a.class_name)
    t_import = time.perf_counter()

    if a.loader == "hf":
        kwargs = {"device_map": a.device} if a.device != "cpu" else {}
        model = cls.from_pretrained(a.model_dir, **kwargs).eval()
    else:
        model = stasis.transformers.from_image(a.image, device=a.device)
    touch(model, torch)
    if a.device != "cpu":
        torch.cuda.synchronize()
    t_ready = time.perf_counter()

    inputs = {k: torch.tensor(v, device=a.device) for k, v in json.loads(a.input).items()}
    run = torch.compile(model) if a.compile else model
    with torch.no_grad():
        out = run(**inputs)
    first = (out.logits if hasattr(out, "logits") else out.last_hidden_state).detach().cpu()
    t_first = time.perf_counter()
    torch.save(first, a.out)
    if os.environ.get("STASIS_BENCH_DEBUG") and a.compile:
        from torch._dynamo.utils import counters

        print({k: dict(v) for k, v in counters.items() if k in ("inductor", "aot_autograd")}, file=sys.stderr)
    print(
        json.dumps(
            {
                "import_s": t_import - T0,
                "ready_s": t_ready - t_import,
                "first_s": t_first - t_ready,
                "torch": torch.__version__,
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
