from snakescope.config import TrainConfig
from snakescope.logs import log_to_file
from snakescope.planner import apply_plan
from snakescope.train import fit

log_to_file(snakemake.log[0])
fit(
    arrays_store=snakemake.input.arrays,
    samples_tsv=snakemake.input.samples,
    split_json=snakemake.input.split,
    plan_json=snakemake.input.plan,
    fingerprint_json=snakemake.input.fingerprint,
    cfg=TrainConfig.from_settings(
        apply_plan(snakemake.params.settings, snakemake.input.recommendation),
        model=snakemake.wildcards.model, seed=int(snakemake.wildcards.seed)
    ),
    model_out=snakemake.output.model,
    history_out=snakemake.output.history,
    card_out=snakemake.output.card,
    work_dir=snakemake.params.work_dir,
    threads=snakemake.threads,
)
