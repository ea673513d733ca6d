"""Decoder size and output stride of every Table 9 method at every profile, as
a markdown table (the README's "Networks" table).

    python benchmarks/model_sizes.py --out figures/benchmarks/networks.md

Networks are built on the meta device (no memory, no weights), from the same
configuration a run of that method and profile records, so the table shows
what the runs train. "Decoder" counts every parameter outside the encoder
except Semi-SegDefect's representation head, which has its own column (only
the contrastive loss uses it); Duo-SegNet trains two such networks and a critic.
"""

from __future__ import annotations

import argparse

import semiseg_helpers  # noqa: F401  (torchvision fix first)
import torch

from semiseg_helpers.config import PROFILES, make_config
from semiseg_helpers.methods import build_method
from semiseg_helpers.models import decoder_parameters

METHODS = ("semisegdefect", "supervised", "unimatch", "duosegnet", "deeplabv3plus", "fpn")


def sizes(profile: str, method: str) -> dict:
    config = make_config(profile, {"model.pretrained": None}, method=method)
    with torch.device("meta"):
        net = build_method(config, 4).inference_model()
    head = getattr(net, "representation", None)
    rep = sum(p.numel() for p in head.parameters()) if head is not None else 0
    m = config.model
    return {"profile": profile, "method": method, "arch": m.arch,
            "decoder_channels": m.decoder_channels, "aspp_rates": m.aspp_rates,
            "output_stride": getattr(net, "output_stride", None),
            "decoder": decoder_parameters(net) - rep, "representation_head": rep}


def markdown(rows: list[dict]) -> str:
    def millions(n: int) -> str:
        return f"{n / 1e6:.2f} M" if n else "–"

    lines = ["| profile | method | network | width | ASPP rates | output stride | decoder | rep. head |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for r in rows:
        rates = "/".join(map(str, r["aspp_rates"])) if r["aspp_rates"] else "–"
        lines.append(f"| {r['profile']} | {r['method']} | {r['arch']} | {r['decoder_channels']} | "
                     f"{rates} | {r['output_stride']} | {millions(r['decoder'])} | "
                     f"{millions(r['representation_head'])} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES))
    parser.add_argument("--out", help="also write the table here (figures/benchmarks/networks.md)")
    args = parser.parse_args(argv)
    table = markdown([sizes(p, m) for p in args.profiles for m in METHODS])
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
