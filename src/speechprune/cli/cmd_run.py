"""``speechprune run``: from audio to a smaller model and a report, in one resumable command."""

from __future__ import annotations

from typing import List, Optional

import typer

from speechprune.cli.common import console


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        args: Optional[List[str]] = typer.Argument(
            None, help="[CONFIG.yaml] then any key=value overrides, e.g. train.epochs=2 compress.removal.enabled=false"),
        progress: bool = typer.Option(True, help="Show progress bars."),
        overwrite: bool = typer.Option(False, help="Start afresh in OUT, replacing whatever is there (a foreign "
                                       "non-empty OUT is refused without it; an earlier run's OUT is resumed)."),
    ) -> None:
        """Analyse the layers, pick and build compressed candidates, fine-tune and evaluate them and the unpruned
        baseline, and write OUT/report.html + report.md (table of params, MACs/s, latency, accuracy, retained
        accuracy with the recommended model marked; similarity heatmaps, convexity/probe curves, Pareto plot).

        Keys (YAML or dotted overrides): model, data, label, labels, group, window, out, seed, batch_size,
        profile_seconds, latency_repeats, recommend_min_retained; split.{split_column,test_groups,val_groups,
        test_fraction,val_fraction}; train.{epochs,batch_size,lr,head_lr,schedule,warmup_ratio,freeze_front_end,
        patience,max_seconds,mixed_precision}; analysis.{enabled,metrics,similarity,permutations,max_pairs,convexity_max_rows,chance_pairs,probe_folds,probe,knn_k,convexity_k,pooling,processes};
        compress.truncate.{enabled,tolerance}; compress.removal.{enabled,orders,min_retained};
        compress.distill.{enabled,mimickers,stage1_epochs,stage2_epochs}; compress.structured.{enabled,budgets,epochs,p0_keep,gate_lr,reg_lr,target_warmup,finetune_epochs}.

        Re-running skips every stage whose inputs did not change; a killed run continues where it stopped.
        Several processes or GPUs: `accelerate launch --multi_gpu --num_processes N -m speechprune.cli.app run ...`
        (training stages are data-parallel, the rest runs on the main process; train.batch_size is per process).

            speechprune run run.yaml train.epochs=2
            speechprune run model=models/whisper-base data=../shared/data/emodb label=emotion group=speaker split.test_groups=14,15,16 window=2 out=runs/emodb
        """
        from speechprune import api

        items = list(args or [])
        config = items.pop(0) if items and "=" not in items[0] else None
        res = api.run(config, items, overwrite=overwrite, progress=progress, log=lambda m: console.print(m))
        from speechprune.utils.distributed import is_main_process

        if not is_main_process():
            return  # one summary per multi-process run
        rec = next((r for r in res["candidates"] if r["recommended"]), None)
        if rec is None:  # the chance guard, or no candidate keeps enough of the baseline: the report says why
            guard = ((res.get("evidence") or {}).get("chance_guard") or {}).get("message")
            console.print("[bold red]no model is recommended[/bold red]: "
                          + (guard or "no candidate keeps enough of the unpruned model's validation accuracy"))
        else:
            console.print(f"recommended: [bold]{rec['name']}[/bold] ({rec['kind']}), accuracy {rec['accuracy']:.3f}, "
                          f"{rec['gmacs_per_s']:.2f} GMACs/s")
        out = (res.get("config") or {}).get("out")
        if out:
            console.print(f"[green]report[/green] → {out}/report.html")
