"""Says what an image shows and whether it matches a prompt: `python -m easel.demo.check demo.png --prompt "..."`."""

import argparse

from PIL import Image

from easel.demo import judge, score
from easel.demo.scenes import Scene, caption


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("image", help="an image file")
    parser.add_argument("--prompt", required=True, help="the prompt the image was generated from")
    args = parser.parse_args()
    verdict = judge(Image.open(args.image))
    shown = caption(Scene(verdict.shapes, verdict.background)) if verdict.shapes else "no shape"
    results = score(verdict, args.prompt)
    marks = ", ".join(f"{attribute} {'right' if right else 'WRONG'}" for attribute, right in results.items())
    print(f"checker: {args.image} shows {shown!r}")
    print(f"against {args.prompt!r}: {marks} ({sum(results.values())}/{len(results)})")


if __name__ == "__main__":
    main()
