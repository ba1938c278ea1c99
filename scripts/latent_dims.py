"""Where the KL goes: each latent dimension's share of the rate, and whether it is active.

    python scripts/latent_dims.py --model runs/ptb [--text data/ptb/ptb.valid.txt] [--max-lines N]

For the lines of `--text`, per dimension d: `kl`, the mean over sentences of KL(q(z_d|x) || N(0, 1))
in nats; `mean_variance`, Var_x(E_q[z_d|x]) (above 0.01 the dimension counts as an active unit,
Burda et al. 2016); `posterior_variance`, the mean of the posterior's variance (near 1 with a mean
near 0: the dimension is the prior, whatever the sentence). Prints one JSON object with the
dimensions by decreasing KL.
"""

from __future__ import annotations

import argparse
import json

from textvae.cli import read_nonempty_lines
from textvae.errors import UserError, run_script
from textvae.metrics import ACTIVE_UNIT_THRESHOLD


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a run or model directory")
    parser.add_argument("--text", default="data/ptb/ptb.valid.txt", help="one sentence per line")
    parser.add_argument("--max-lines", type=int, help="only the first N lines")
    args = parser.parse_args(argv)
    if args.max_lines is not None and args.max_lines < 1:
        raise UserError(f"--max-lines must be at least 1, got {args.max_lines}")
    lines = read_nonempty_lines(args.text)[: args.max_lines]

    from textvae.api import TextVAE
    from textvae.losses import gaussian_kl

    vae = TextVAE.from_pretrained(args.model)
    mean, logvar = (t.double() for t in vae.posterior(lines))
    kl = gaussian_kl(mean, logvar).mean(0)
    mean_variance = mean.var(0)
    posterior_variance = logvar.exp().mean(0)
    dims = [{"dim": d, "kl": kl[d].item(), "mean_variance": mean_variance[d].item(),
             "posterior_variance": posterior_variance[d].item(),
             "active": mean_variance[d].item() > ACTIVE_UNIT_THRESHOLD}
            for d in kl.argsort(descending=True).tolist()]
    print(json.dumps({"model": args.model, "text": args.text, "sentences": len(lines), "kl": kl.sum().item(),
                      "au": sum(d["active"] for d in dims), "dims": dims}))


if __name__ == "__main__":
    run_script(main, "latent_dims")
