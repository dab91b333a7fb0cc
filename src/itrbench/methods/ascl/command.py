"""`itrbench alignment-uniformity --run RUN_DIR --out FILE.json`: AsCL Fig. 4 measures of a trained run.

Embeds the run's evaluation split and reads the unimodal `pooled` embeddings (AsCL: l2-normalised mean of the
projected regions / real words, SPEC §4.3), then writes `geometry.alignment_uniformity` as JSON.
"""
from __future__ import annotations

import json


def run(args) -> int:
    from itrbench.errors import ConfigError
    from itrbench.evaluation import encode_split
    from itrbench.methods.ascl.geometry import alignment_uniformity
    from itrbench.training import load_trained
    from itrbench.utils import write_json

    config, model, data, device, _ = load_trained(args.run)
    img, cap, seconds = encode_split(model, data.eval_split, device=device, batch_size=config["eval"]["batch_size"],
                                     token_cache=data.eval_cache, max_images=config["data"]["max_eval_images"])
    if "pooled" not in img or "pooled" not in cap:
        raise ConfigError(f"{args.run}: method '{config['method']}' has no unimodal 'pooled' embeddings; "
                          "alignment-uniformity expects a model whose embed_images/embed_captions return them (AsCL)")
    result = alignment_uniformity(img["pooled"], cap["pooled"], captions_per_image=5)
    result.update(run=str(args.run), split=data.eval_split.split, embedding="pooled", encode_seconds=seconds,
                  dataset=config["data"]["dataset"], seed=config["seed"])
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("alignment", "uniformity")}))
    return 0


def register(sub) -> None:
    p = sub.add_parser("alignment-uniformity", help="alignment and uniformity of a trained run's embeddings (AsCL Fig. 4)")
    p.add_argument("--run", required=True, help="run folder written by `itrbench train`")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.set_defaults(func=run)
