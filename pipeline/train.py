"""Stage train: fit the model chosen by `model.type` on the train split, keep the best on valid."""

import dataclasses
import os
import shutil
import time
from pathlib import Path

import polars as pl
import torch
import typer
from dvclive import Live

from chitchat.answering.checkpoint import CHECKPOINT_NAME, HF_DIR, RETRIEVAL_DIR, save_checkpoint, save_retrieval_checkpoint
from chitchat.answering.retrieval import RetrievalConfig, RetrievalIndex
from chitchat.core.io import atomic_dir, config_from, load_params, section, write_json
from chitchat.core.stage import progress_bar, stage_errors
from chitchat.models import ModelConfig, build_model
from chitchat.text.tokenizer import Tokenizer
from chitchat.training import distributed
from chitchat.training.batching import encode_pairs, encode_text_windows
from chitchat.training.loop import TrainConfig, seed_everything, set_cpu_threads, train

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
        context = _text_normalization(all_params)  # recorded in the checkpoint: serving encodes as training did
        rcfg = config_from(RetrievalConfig, all_params.get("retrieval") or {}, "retrieval")
        if (all_params.get("model") or {}).get("type") == "retrieval":  # the baseline: an index, no network
            train_retrieval(rcfg, split_dir, out_dir, metrics, live_dir, context)
            return
        tcfg, mcfg, tok = _configs(all_params, params, tokenizer_dir)
        ctx, device = distributed.setup(tcfg.device)
        try:
            # the same count, the same sums: bit-identical CPU reruns (torchrun's processes share the CPUs)
            threads = set_cpu_threads(tcfg.threads, int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world)))
            if device.type == "cpu":
                torch.use_deterministic_algorithms(True)
            seed_everything(tcfg.seed)
            frames = [pl.read_parquet(split_dir / f"{name}.parquet") for name in ("train", "valid")]
            model, tok, mcfg = _model(mcfg, tok, frames[0], context)
            train_ex, valid_ex = _examples(frames, tok, tcfg, mcfg, context)
            parameters = {"parameters": model.num_parameters(),  # trainable: the LoRA adapter only, with LoRA
                          "parameters_total": sum(p.numel() for p in model.parameters())}
            result = fit(model, train_ex, valid_ex, tcfg, tok.pad_id, device, ctx, live_dir, resume_file)
        finally:
            distributed.teardown()
        if not ctx.is_main:
            return
        # every question -> answer model keeps the baseline's index beside it: rerank_k and the comparison
        index = RetrievalIndex.fit(frames[0], rcfg, context["max_history"]) if mcfg.task != "lm" else None
        _save(out_dir, model, tok, mcfg, tcfg, result, context, index)
        write_json(metrics, _summary(mcfg, tcfg, result, parameters, device, ctx, len(train_ex), context, threads))
        publish_curves(resume_file, live_dir)
        typer.echo(f"train: best valid loss {result.best_valid_loss:.4f} at step {result.best_step}", err=True)


def _configs(all_params: dict, params: Path, tokenizer_dir: Path):
    """TrainConfig, ModelConfig (vocabulary from our tokenizer) and the tokenizer (None for hf)."""
    tcfg = config_from(TrainConfig, section(all_params, "train", params), "train")
    model_params = section(all_params, "model", params)
    hf = model_params.get("type") == "hf"  # a pretrained LM brings its own tokenizer, see _model
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
    return tcfg, mcfg, tok


def _model(mcfg: ModelConfig, tok, train: pl.DataFrame, context: dict):
    """The model to train, its tokenizer and config; hf loads both from model.pretrained."""
    if mcfg.type != "hf":
        return build_model(mcfg), tok, mcfg
    from chitchat.models.hf import load_pretrained  # data/tokenizer is not used

    model, tok = load_pretrained(mcfg, train["category"].unique().to_list(), context["condition_field"])
    return model, tok, model.cfg


def _examples(frames: list[pl.DataFrame], tok, tcfg: TrainConfig, mcfg: ModelConfig, context: dict):
    """Train and valid examples: windows of text for lm, (source, answer) pairs otherwise."""
    if mcfg.task == "lm":
        return (encode_text_windows(frame["answer"].to_list(), tok, tcfg.max_tgt_len) for frame in frames)
    return (encode_pairs(frame, tok, tcfg.max_src_len, tcfg.max_tgt_len, mcfg.condition, context["max_history"])
            for frame in frames)


def _save(out_dir: Path, model, tok, mcfg: ModelConfig, tcfg: TrainConfig, result, context: dict,
          index: RetrievalIndex | None) -> None:
    """data/model: the checkpoint beside our tokenizer, or beside one Hugging Face folder for hf, and
    the retrieval index of the train pairs."""
    hf = mcfg.type == "hf"
    with atomic_dir(out_dir) as tmp:
        if index is not None:
            index.save(tmp / RETRIEVAL_DIR)
        if hf:  # one Hugging Face folder, LoRA merged: serving needs neither model.pretrained nor peft
            from chitchat.models.hf import save_hf_model

            save_hf_model(model.cpu(), tok, tmp / HF_DIR)
        else:
            tok.save(tmp / "tokenizer")
        save_checkpoint(tmp / CHECKPOINT_NAME, model.cpu(), mcfg, tokenizer_dir=HF_DIR if hf else "tokenizer",
                        max_src_len=tcfg.max_src_len, max_tgt_len=tcfg.max_tgt_len,
                        step=result.best_step, best_valid_loss=result.best_valid_loss,
                        train_config=vars(tcfg), prepare=context)


def _summary(mcfg: ModelConfig, tcfg: TrainConfig, result, parameters: dict, device, ctx, train_examples: int,
             context: dict, threads: int) -> dict:
    """metrics/train.json."""
    return {
        "model_type": mcfg.type,
        **({"task": "lm", "window": tcfg.max_tgt_len} if mcfg.task == "lm" else {}),
        **parameters,
        **({"pretrained": mcfg.pretrained, "lora_r": mcfg.lora_r} if mcfg.type == "hf" else {}),
        "device": device.type,
        "processes": ctx.world,
        "threads": threads,
        # the vector instructions torch's kernels use (AVX2, AVX512): CPUs of another kind round differently
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "precision": result.precision,
        "compiled": tcfg.compile,
        "steps": result.steps,
        "epochs": result.epochs,
        "best_step": result.best_step,
        "best_valid_loss": result.best_valid_loss,
        "final_train_loss": result.final_train_loss,
        "train_tokens": result.train_tokens,
        "train_examples": train_examples,
        "max_history": context["max_history"],
        "tokens_per_second": round(result.train_tokens / result.seconds, 1),
        "seconds": round(result.seconds, 1),
        "stopped_early": result.stopped_early,
        "stopped_by_time": result.stopped_by_time,
        "skipped_steps": result.skipped_steps,
        "resumed_from_step": result.resumed_from_step,
    }


def fit(model, train_ex, valid_ex, tcfg: TrainConfig, pad_id: int, device, ctx: distributed.DistContext,
        live_dir: Path, resume_file: Path):
    """Run the loop with dvclive curves and a progress bar on rank 0 only.

    The curves grow in a folder beside the resume file (data/resume/live: watch it there) and
    replace `live_dir` when the model is saved (publish_curves), so metrics/live never shows a killed run's curves beside
    another model; a resumed run replays the curve up to its checkpoint first.
    """
    if not ctx.is_main:
        return train(model, train_ex, valid_ex, tcfg, pad_id, device, resume_path=resume_file,
                     rank=ctx.rank, world=ctx.world)
    live = Live(str(_growing_curves(resume_file)), dvcyaml=False, save_dvc_exp=False, report=None)

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
        def say(line: str) -> None:  # one line, never wrapped at the console's width
            bar.console.print(f"train: {line}", markup=False, highlight=False, soft_wrap=True)

        result = train(model, train_ex, valid_ex, tcfg, pad_id, device, log, progress, resume_file,
                       rank=ctx.rank, world=ctx.world, say=say)
    live.make_summary()
    live.end()
    return result


def _growing_curves(resume_file: Path) -> Path:
    """Where fit's curves grow until publish_curves moves them: beside the resume file."""
    return resume_file.parent / "live"


def publish_curves(resume_file: Path, live_dir: Path) -> None:
    """The finished run's curves (fit) replace `live_dir`, after the model and train.json."""
    growing = _growing_curves(resume_file)
    with atomic_dir(live_dir) as tmp:
        shutil.copytree(growing, tmp, dirs_exist_ok=True)
    shutil.rmtree(growing)


def train_retrieval(rcfg: RetrievalConfig, split_dir: Path, out_dir: Path, metrics: Path, live_dir: Path,
                    context: dict) -> None:
    """model.type retrieval: index the train pairs. Its one curve point: the mean similarity of each
    valid question's best train match (how close the valid questions come to the indexed ones)."""
    start = time.perf_counter()
    train, valid = (pl.read_parquet(split_dir / f"{name}.parquet") for name in ("train", "valid"))
    index = RetrievalIndex.fit(train, rcfg, context["max_history"])
    seconds = time.perf_counter() - start
    histories = valid["history"].to_list() if "history" in valid.columns else None
    hits = index.search(valid["question"].to_list(), valid["category"].to_list(), histories)
    similarity = sum(found[0].score for found in hits if found) / max(1, len(hits))
    with atomic_dir(out_dir) as tmp:
        index.save(tmp / RETRIEVAL_DIR)
        save_retrieval_checkpoint(tmp / CHECKPOINT_NAME, prepare=context)
    live = Live(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    live.log_metric("valid/top1_similarity", similarity)
    live.end()
    vocabulary = len(index.vectorizer.vocabulary_)
    write_json(metrics, {"model_type": "retrieval", "retrieval": dataclasses.asdict(rcfg), "train_examples": train.height,
                         "vocabulary": vocabulary, "valid_top1_similarity": similarity,
                         "max_history": context["max_history"], "seconds": round(seconds, 1)})
    typer.echo(f"train retrieval: {train.height} pairs indexed, {vocabulary} n-grams, "
               f"valid top-1 similarity {similarity:.3f}", err=True)


def _text_normalization(all_params: dict) -> dict:
    """prepare's case and ё/е folding, history length and condition field, so the inference service
    treats questions (and the turns before them) like training data."""
    prepare = all_params.get("prepare") or {}
    return {"lowercase": bool(prepare.get("lowercase", False)), "yo_to_e": bool(prepare.get("yo_to_e", False)),
            "max_history": int(prepare.get("max_history", 0)),
            "condition_field": str(prepare.get("condition_field", "category"))}


if __name__ == "__main__":
    app()
