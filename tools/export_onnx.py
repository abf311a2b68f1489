"""Export shipped networks to ONNX (model.onnx beside weights.pt) and record it in each card.

ONNX Runtime runs the export on the CPU (the registry picks it automatically; torch stays for
training and GPUs). The card's ``onnx`` entry gets the file's sha256 (verified before every
run), the opset and the largest class-score difference from torch on a phantom and a random
batch; an export that differs by more than 1e-3 is refused.

    python tools/export_onnx.py                 # every shipped model
    python tools/export_onnx.py unet-light      # one
"""
import argparse


def main(argv=None):
    from CardiacAISegLib.models.registry import SHIPPED_DIR, read_card
    from CardiacAISegLib.models.shipping import ONNX_OPSET, export_onnx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", help="shipped model names (default: all)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET)
    args = p.parse_args(argv)
    folders = sorted(f for f in SHIPPED_DIR.iterdir() if (f / "model.json").is_file())
    if args.names:
        known = {f.name for f in folders}
        unknown = sorted(set(args.names) - known)
        if unknown:
            p.error(f"not shipped: {', '.join(unknown)}; shipped: {', '.join(sorted(known))}")
        folders = [f for f in folders if f.name in args.names]
    for folder in folders:
        if read_card(folder)["weights"]["format"] == "onnx":
            continue
        card = export_onnx(folder, opset=args.opset)
        o = card["onnx"]
        print(f"{card['name']}: {o['file']} {o['bytes'] / 1e6:.1f} MB, sha256 {o['sha256'][:12]}…, "
              f"max |ORT - torch| {o['parity_max_abs_diff']:.2g}")


if __name__ == "__main__":
    main()
