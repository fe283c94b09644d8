"""`gpt2-jax inspect`: attention maps, next-token entropy, the logit lens and the embeddings of one
text under a run or an export, as PNGs, JSON and .npz in a folder, with a per-token table printed."""

from __future__ import annotations

import sys

from gpt2_jax.cli import common


def _indices(text: str | None, flag: str) -> list[int] | None:
    """'0,2,5' as [0, 2, 5]; None keeps every one."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise common.UsageError(f"{flag} {text!r} is not a comma-separated list of numbers, e.g. {flag} 0,2") from None


def add_parser(sub) -> None:
    """Adds the `inspect` subcommand to the subparsers `sub`."""
    s = sub.add_parser("inspect", help="attention, entropy, logit lens and embeddings of a text, as pictures + JSON")
    s.add_argument("--run", required=True, help="run directory or export")
    s.add_argument("--text", required=True, help="the text to look at (EOS is put in front)")
    s.add_argument("--out", required=True, help="folder for attention.png, entropy.png, logit_lens.png, "
                                                "embeddings.png, inspection.json, arrays.npz")
    s.add_argument("--step", default="latest", help="latest | best | a step number")
    s.add_argument("--layers", help="layers of the attention grid, e.g. 0,3 (default: all)")
    s.add_argument("--heads", help="heads of the attention grid, e.g. 0,1 (default: all)")
    s.add_argument("--top-k", type=int, default=5, help="next tokens kept per position")
    s.add_argument("--tokens", nargs="+", help="tokens of the embedding scatter (default: the text's own)")
    s.add_argument("--neighbours", type=int, default=5, help="nearest tokens by cosine listed per token in the JSON")
    s.add_argument("--max-positions", type=int, default=48, help="positions drawn in the logit-lens grid")
    s.add_argument("--truncate", action="store_true",
                   help="a text longer than the context: keep its first tokens (default: error)")
    s.set_defaults(handler=run)


def run(args, overrides: list[str], env) -> int:
    """`gpt2-jax inspect`."""
    common.no_overrides("inspect", overrides)
    layers, heads = _indices(args.layers, "--layers"), _indices(args.heads, "--heads")
    from gpt2_jax import api
    from gpt2_jax.interpret import report

    m = api.load(args.run, step=args.step)
    print(m.summary(), file=sys.stderr, flush=True)
    ins = m.inspect(args.text, top_k=args.top_k, truncate=args.truncate)
    if ins.truncated_from is not None:
        print(f"notice: the text is {ins.truncated_from} tokens; inspected its first {len(ins.ids)} "
              f"(the model's context)", file=sys.stderr, flush=True)
    chosen_tokens = args.tokens or [int(i) for i in dict.fromkeys(ins.ids.tolist())]
    proj = m.embedding_pca(chosen_tokens)
    neighbours = m.nearest_tokens(proj.ids, k=args.neighbours)
    paths = report.write(ins, proj, neighbours, args.out, layers, heads, args.max_positions)
    print(f"{'pos':>4} {'token':>8} {'entropy':>8} {'loss':>7}  top next tokens (p)")
    for pos, token in enumerate(ins.tokens):
        top = ", ".join(f"{ins.label(i)} {p:.2f}" for i, p in zip(ins.top_ids[pos][:3], ins.top_probs[pos][:3]))
        loss = "" if pos == len(ins.tokens) - 1 else f"{ins.loss[pos]:.3f}"
        print(f"{pos:>4} {token:>8} {ins.entropy_bits[pos]:>7.3f}b {loss:>7}  {top}")
    print(f"mean next-token entropy {ins.entropy_bits.mean():.3f} bits; mean loss {ins.loss[:-1].mean():.4f} "
          f"nats/token over {len(ins.tokens) - 1} predicted tokens" if len(ins.tokens) > 1 else
          f"mean next-token entropy {ins.entropy_bits.mean():.3f} bits (one token: no loss)")
    print("wrote " + ", ".join(paths.values()), file=sys.stderr, flush=True)
    return 0
