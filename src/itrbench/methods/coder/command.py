"""`itrbench concepts`: CODER concept vocabulary, co-occurrence, adjacency and word vectors of a training split."""
from __future__ import annotations


def run(args) -> int:
    from itrbench.methods.coder.concepts import build_concepts
    from itrbench.data.precomp import open_split
    from itrbench.errors import ConfigError

    if args.num_concepts < 2:
        raise ConfigError(f"--num-concepts: expected an integer >= 2, got {args.num_concepts}")
    if args.max_images is not None and args.max_images < 1:
        raise ConfigError(f"--max-images: expected a positive integer, got {args.max_images}")
    split = open_split(args.root, args.dataset, args.split)
    c = build_concepts(split, args.out, num_concepts=args.num_concepts, word_vectors=args.word_vectors,
                       max_images=args.max_images)
    missing = len(c.meta.get("missing_words", []))
    edges = int((c.adjacency > 0).sum() - c.num_concepts)
    print(f"{c.num_concepts} concepts from {c.meta['n_images']} images ({edges} graph edges, "
          f"word vectors {c.word_vectors.shape[1]}-d, {missing} missing) -> {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("concepts", help="build CODER's concept graph inputs from a training split")
    p.add_argument("--root", required=True, help="folder holding <dataset>_precomp/")
    p.add_argument("--dataset", required=True, help="data set folder name, e.g. toy-f30k")
    p.add_argument("--split", default="train", help="split whose captions give the concepts (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder (vocab.txt, cooc.npy, freq.npy, adjacency.npy, word_vectors.npy, meta.json)")
    p.add_argument("--num-concepts", type=int, default=400, help="most frequent words kept as concepts (default: %(default)s)")
    p.add_argument("--word-vectors", default="minilm", help="'minilm' or the path of a GloVe .txt file")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N images of the split")
    p.set_defaults(func=run)
