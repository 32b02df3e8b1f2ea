from snakescope.export import export_model
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
export_model(
    model_pt=snakemake.input.model,
    arrays_store=snakemake.input.arrays,
    split_json=snakemake.input.split,
    settings=snakemake.params.settings,
    out_dir=str(snakemake.output.record).rsplit("/", 1)[0],
    metrics_json=snakemake.input.metrics or None,
    run_info={
        "dataset": snakemake.wildcards.dataset,
        "model": snakemake.wildcards.model,
        "seed": int(snakemake.wildcards.seed),
    },
)
