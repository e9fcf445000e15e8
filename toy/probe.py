"""What can a motion module see? A linear probe of the prompt's direction (and colour) in the frozen
image layers' outputs, where the motion modules sit, at high noise where a video's motion is decided.

    python toy/probe.py --sd15 toy/weights/toy_sd15.safetensors

The motion modules have no text input (the AnimateDiff recipe): a caption's direction reaches them
only through the spatial layers' features. For every seen combination and 8 noise draws, the UNet
runs on pure noise at t (the text is the only source of information), each spatial transformer's
output is averaged over space, and a logistic regression trained on 6 noise draws is scored on the
other 2. A randomly initialised UNet (`--random`) is the floor: cross-attention alone mixes token
values into the features.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
from lcm.schedule import NoiseSchedule  # noqa: E402
from toy.health import fixed_prompts  # noqa: E402


def linear_probe(features: torch.Tensor, target: torch.Tensor, train: int, classes: int, iters: int = 300) -> float:
    """Held-out accuracy of a logistic regression fitted on the first `train` rows."""
    x = (features - features[:train].mean(0)) / (features[:train].std(0) + 1e-5)
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    for _ in range(iters):
        loss = torch.nn.functional.cross_entropy(x[:train] @ weight + bias, target[:train]) + 1e-3 * weight.square().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(((x[train:] @ weight + bias).argmax(1) == target[train:]).float().mean())


@torch.no_grad()
def spatial_features(unet, context: torch.Tensor, t: int, generator: torch.Generator, latent: int = 8) -> dict:
    """name -> [B, C]: every spatial transformer's output, averaged over space, on pure noise at t."""
    found, hooks = {}, []
    for name, module in unet.named_modules():
        if type(module).__name__ == "SpatialTransformer":
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: found.__setitem__(name, o.mean((2, 3)))))
    noise = torch.randn(len(context), unet.cfg.in_channels, latent, latent, generator=generator)
    timesteps = torch.full((len(context),), t)
    x_t = NoiseSchedule("beta_linear").add_noise(torch.zeros_like(noise), noise, timesteps)
    unet(x_t, timesteps, context)
    for h in hooks:
        h.remove()
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sd15", required=True)
    p.add_argument("--random", action="store_true", help="re-initialise the UNet (the floor)")
    p.add_argument("--t", type=int, nargs="+", default=[999, 900, 700, 500])
    args = p.parse_args(argv)
    from sd15 import load_sd15
    model = load_sd15(args.sd15)
    if args.random:
        from unet.model import UNet
        torch.manual_seed(0)
        model.unet = UNet(model.unet.cfg).eval()
    draws, train_draws = 8, 6
    captions, target = fixed_prompts(repeats=draws)
    context = model.encode_prompts(captions)
    train = len(captions) // draws * train_draws
    for t in args.t:
        features = spatial_features(model.unet, context, t, torch.Generator().manual_seed(0))
        print(f"t={t}: " + " | ".join(
            f"{name.replace('.attentions', '')} direction {linear_probe(f, target['direction'], train, 4):.2f} "
            f"colour {linear_probe(f, target['colour'], train, 4):.2f}" for name, f in features.items()))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
