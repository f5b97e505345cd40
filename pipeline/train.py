"""Stage train: fit the model chosen by `model.type` on the train split, keep the best on valid."""

import dataclasses
from pathlib import Path

import polars as pl
import torch
import typer
from dvclive import Live

from chitchat.answering.checkpoint import CHECKPOINT_NAME, HF_DIR, save_checkpoint
from chitchat.core.io import atomic_dir, config_from, load_params, section, write_json
from chitchat.models import ModelConfig, build_model
from chitchat.core.stage import progress_bar, stage_errors
from chitchat.text.tokenizer import Tokenizer
from chitchat.training.batching import encode_pairs, encode_text_windows
from chitchat.training import distributed
from chitchat.training.loop import TrainConfig, seed_everything, train

app = typer.Typer(add_completion=False)


@app.command()
def main(
    params: Path = typer.Option(Path("params.yaml"), help="params file"),
    split_dir: Path = typer.Option(Path("data/split"), help="folder with train/valid.parquet"),
    tokenizer_dir: Path = typer.Option(Path("data/tokenizer"), help="tokenizer folder"),
    out_dir: Path = typer.Option(Path("data/model"), help="model folder (checkpoint + tokenizer)"),
    metrics: Path = typer.Option(Path("metrics/train.json"), help="training summary"),
    live_dir: Path = typer.Option(Path("metrics/live"), help="dvclive curves"),
    resume_file: Path = typer.Option(Path("data/resume/train.pt"),
                                     help="training state saved every train.checkpoint_every steps"),
) -> None:
    """Train with teacher forcing; log losses per step; save the best checkpoint.

    Under `torchrun --nproc_per_node=N` every process trains on its share of each step's batches
    (DistributedDataParallel; NCCL on GPUs, gloo on CPUs) and rank 0 writes the outputs.
    """
    with stage_errors("train"):
        all_params = load_params(params)
        tcfg = config_from(TrainConfig, section(all_params, "train", params), "train")
        model_params = section(all_params, "model", params)
        hf = model_params.get("type") == "hf"  # a pretrained LM brings its own tokenizer, see below
        tok = None if hf else Tokenizer.load(tokenizer_dir)
        mcfg = config_from(ModelConfig, model_params, "model", **({} if hf else
                           {"vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "sep_id": tok.sep_id}))
        lm = mcfg.task == "lm"  # a language model: the text of `answer` in windows of train.max_tgt_len tokens
        if lm and tcfg.max_tgt_len > mcfg.max_len:
            raise ValueError("train.max_tgt_len (the lm window) must not exceed model.max_len")
        if lm:
            mcfg = dataclasses.replace(mcfg, context=tcfg.max_tgt_len)  # what the model attends to when generating
        elif mcfg.type in ("cnn", "transformer") and max(tcfg.max_src_len, tcfg.max_tgt_len) > mcfg.max_len:
            raise ValueError("train.max_src_len and train.max_tgt_len must not exceed model.max_len")
        ctx, device = distributed.setup(tcfg.device)
        try:
            if device.type == "cpu":
                torch.use_deterministic_algorithms(True)
            seed_everything(tcfg.seed)
            frames = [pl.read_parquet(split_dir / f"{name}.parquet") for name in ("train", "valid")]
            if hf:  # model and tokenizer from model.pretrained; data/tokenizer is not used
                from chitchat.models.hf import load_pretrained

                model, tok = load_pretrained(mcfg, frames[0]["category"].unique().to_list(),
                                             _text_normalization(all_params)["condition_field"])
                mcfg = model.cfg
            else:
                model = build_model(mcfg)
            context = _text_normalization(all_params)  # recorded below: serving encodes as training did
            if lm:
                train_ex, valid_ex = (encode_text_windows(frame["answer"].to_list(), tok, tcfg.max_tgt_len)
                                      for frame in frames)
            else:
                train_ex, valid_ex = (encode_pairs(frame, tok, tcfg.max_src_len, tcfg.max_tgt_len, mcfg.condition,
                                                   context["max_history"]) for frame in frames)
            parameters = {"parameters": model.num_parameters(),  # trainable: the LoRA adapter only, with LoRA
                          "parameters_total": sum(p.numel() for p in model.parameters())}
            result = fit(model, train_ex, valid_ex, tcfg, tok.pad_id, device, ctx, live_dir, resume_file)
        finally:
            distributed.teardown()
        if not ctx.is_main:
            return
        with atomic_dir(out_dir) as tmp:
            if hf:  # one Hugging Face folder, LoRA merged: serving needs neither model.pretrained nor peft
                from chitchat.models.hf import save_hf_model

                save_hf_model(model.cpu(), tok, tmp / HF_DIR)
            else:
                tok.save(tmp / "tokenizer")
            save_checkpoint(tmp / CHECKPOINT_NAME, model.cpu(), mcfg, tokenizer_dir=HF_DIR if hf else "tokenizer",
                            max_src_len=tcfg.max_src_len, max_tgt_len=tcfg.max_tgt_len,
                            step=result.best_step, best_valid_loss=result.best_valid_loss,
                            train_config=vars(tcfg), prepare=context)
        write_json(metrics, {
            "model_type": mcfg.type,
            **({"task": "lm", "window": tcfg.max_tgt_len} if lm else {}),
            **parameters,
            **({"pretrained": mcfg.pretrained, "lora_r": mcfg.lora_r} if hf else {}),
            "device": device.type,
            "processes": ctx.world,
            "precision": result.precision,
            "compiled": tcfg.compile,
            "steps": result.steps,
            "epochs": result.epochs,
            "best_step": result.best_step,
            "best_valid_loss": result.best_valid_loss,
            "final_train_loss": result.final_train_loss,
            "train_tokens": result.train_tokens,
            "train_examples": len(train_ex),
            "max_history": context["max_history"],
            "tokens_per_second": round(result.train_tokens / result.seconds, 1),
            "seconds": round(result.seconds, 1),
            "stopped_early": result.stopped_early,
            "stopped_by_time": result.stopped_by_time,
            "skipped_steps": result.skipped_steps,
        })
        typer.echo(f"train: best valid loss {result.best_valid_loss:.4f} at step {result.best_step}", err=True)


def fit(model, train_ex, valid_ex, tcfg: TrainConfig, pad_id: int, device, ctx: distributed.DistContext,
        live_dir: Path, resume_file: Path):
    """Run the loop with dvclive curves and a progress bar on rank 0 only."""
    if not ctx.is_main:
        return train(model, train_ex, valid_ex, tcfg, pad_id, device, resume_path=resume_file,
                     rank=ctx.rank, world=ctx.world)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)

    def log(step: int, values: dict) -> None:
        live.step = step
        for name, value in values.items():
            live.log_metric(name, value)

    with progress_bar() as bar:
        task = bar.add_task(f"train {model.cfg.type}", total=None, info="")

        def progress(step: int, total: int, values: dict) -> None:
            info = "  ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "train/lr")
            bar.update(task, completed=step, total=total, info=info)

        # The resume file lies outside every DVC output: DVC deletes outputs before a stage runs.
        result = train(model, train_ex, valid_ex, tcfg, pad_id, device, log, progress, resume_file,
                       rank=ctx.rank, world=ctx.world)
    live.make_summary()
    live.end()
    return result


def _text_normalization(all_params: dict) -> dict:
    """prepare's case and ё/е folding, history length and condition field, so the inference service
    treats questions (and the turns before them) like training data."""
    prepare = all_params.get("prepare") or {}
    return {"lowercase": bool(prepare.get("lowercase", False)), "yo_to_e": bool(prepare.get("yo_to_e", False)),
            "max_history": int(prepare.get("max_history", 0)),
            "condition_field": str(prepare.get("condition_field", "category"))}


if __name__ == "__main__":
    app()
