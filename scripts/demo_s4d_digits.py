"""Train a small S4D on sequential digits, reload it through the Auto classes and classify test digits.

Example:
    python scripts/demo_s4d_digits.py                              # about a minute on a 2-core CPU
    python scripts/demo_s4d_digits.py --output_dir runs/s4d-demo --seed 1

The data: scikit-learn's 8x8 digits read as length-64 pixel sequences, split 1438 train / 359 test images. The
model: S4D, 2 layers of width 32, state size 32, trained for 20 epochs by scripts/train_classifier.py (a progress
bar shows the steps). The saved folder is reloaded with AutoModelForSequenceClassification.from_pretrained and
classifies the first test digits, drawn as text; the plot of the learned kernels is OUTPUT_DIR/kernels_layer0.png.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from script_utils import ScriptArgumentParser, add_threads_argument  # noqa: E402


def parse_args(argv: list[str] | None):
    parser = ScriptArgumentParser(__doc__)
    parser.add_argument("--output_dir", default=None,
                        help="where the model is saved (default: $DEMO_OUTPUT_DIR, else a new temporary folder)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the model and the batch order")
    add_threads_argument(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # imported after parsing, so that --help and option errors come without loading the data and model code
    import torch
    import train_classifier
    from transformers import AutoModelForSequenceClassification

    import h3_hf  # noqa: F401  (registers the Auto classes)
    from h3_hf.data import load_sequential_digits

    output_dir = args.output_dir or os.environ.get("DEMO_OUTPUT_DIR") or tempfile.mkdtemp(prefix="h3hf-demo-")
    print(f"Training S4D on sequential 8x8 digits (length-64 pixel sequences) -> {output_dir}")
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    results = train_classifier.main([
        "--model", "s4d", "--dataset", "digits", "--output_dir", output_dir, "--seed", str(args.seed),
        "--hidden_size", "32", "--num_hidden_layers", "2", "--state_size", "32",
        "--num_train_epochs", "20", "--log_level", "warning", *threads,
    ])
    print(f"\nS4D test accuracy: {results['eval_accuracy']:.1%} "
          f"(majority class {results['majority_class_accuracy']:.1%}), trained in {results['train_runtime']:.0f} s")

    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    test = load_sequential_digits()["test"].select(range(8))
    pixels = torch.tensor(test["input_values"])
    with torch.no_grad():
        predicted = model(input_values=pixels).logits.argmax(-1).tolist()
    print("\nReloaded with AutoModelForSequenceClassification.from_pretrained; first test digits:")
    for image, label, guess in zip(pixels, test["labels"], predicted):
        rows = image.view(8, 8)
        art = ["".join(" .:-=+*#%@"[min(9, int(v * 10))] for v in row) for row in rows]
        print(f"  true {label}  predicted {guess}  {'ok' if label == guess else 'WRONG'}   |{'|'.join(art[2:6])}|")
    print(f"\nKernels plot: {os.path.join(output_dir, 'kernels_layer0.png')}")


if __name__ == "__main__":
    main()
