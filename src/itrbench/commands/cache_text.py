"""`itrbench cache-text`: encode a split's captions once with the frozen text encoder (memory-mapped cache)."""
from __future__ import annotations

from pathlib import Path


def run(args) -> int:
    from itrbench.data.precomp import open_split
    from itrbench.text import TextEncoder, cache_token_features
    from itrbench.training import set_threads
    from itrbench.utils import resolve_device

    set_threads({"threads": args.threads})
    split = open_split(args.root, args.dataset, args.split)
    captions = split.captions
    if args.captions:  # a generated caption set (e.g. AsCL positives), one line per training caption
        captions = Path(args.captions).read_text(encoding="utf-8").splitlines()
    encoder = TextEncoder(args.encoder, args.max_length, trainable=False)
    cache_token_features(captions, encoder, args.out, args.batch_size, device=resolve_device(args.device))
    print(f"cached {len(captions)} captions -> {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cache-text", help="cache frozen token features of a split's captions")
    p.add_argument("--root", required=True, help="folder holding <dataset>_precomp/")
    p.add_argument("--dataset", required=True, help="data set folder name, e.g. toy-f30k")
    p.add_argument("--split", required=True, help="split whose captions are encoded, e.g. train")
    p.add_argument("--encoder", default="minilm", help="text encoder: minilm (packaged) or a Hugging Face model (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=32, help="tokens per caption, longer ones are cut (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="captions per encoder batch (default: %(default)s)")
    p.add_argument("--captions", help="encode this caption file instead of the split's own captions")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:k]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's own choice)")
    p.add_argument("--out", required=True, help="cache file (.npy); lengths go beside it as .len.npy")
    p.set_defaults(func=run)
