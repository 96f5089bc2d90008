"""Reference side of `ftlab bench model`: the same measurements in PyTorch + transformers.

Builds a randomly initialised OPTForCausalLM of the given shape (transformers' default
attention), then times forward passes (no grad, logits at every position) and training steps
(forward with dropout, `labels=input_ids` loss, backward, torch.optim.AdamW lr 1e-5) exactly as
ftlab's side does, and prints one JSON object. Median of `--repeats` after one warm-up.
"""
import argparse
import json
import statistics
import time

import torch
import transformers


def median_seconds(repeats, step):
    step()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True, help="config.json text")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = transformers.OPTConfig(**json.loads(args.config))
    model = transformers.OPTForCausalLM(config)
    ids = torch.randint(4, config.vocab_size, (args.batch, args.seq))

    model.eval()
    with torch.no_grad():
        forward = median_seconds(args.repeats, lambda: model(input_ids=ids))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def train_step():
        loss = model(input_ids=ids, labels=ids).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    train = median_seconds(args.repeats, train_step)
    tokens = args.batch * args.seq
    print(json.dumps({
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attention": model.config._attn_implementation,
        "forward_tokens_per_s": tokens / forward,
        "train_tokens_per_s": tokens / train,
    }))


if __name__ == "__main__":
    main()
