from snakescope.logs import log_to_file
from snakescope.uncertainty import estimate_uncertainty

log_to_file(snakemake.log[0])
estimate_uncertainty(
    model_pt=snakemake.input.model,
    arrays_store=snakemake.input.arrays,
    samples_tsv=snakemake.input.samples,
    split_json=snakemake.input.split,
    out_dir=snakemake.output.results,
    samples=snakemake.params.settings["mc_samples"],
    seed=int(snakemake.wildcards.seed),
    device=snakemake.params.settings["device"],
    threads=snakemake.threads,
    threshold=snakemake.params.settings["threshold"],
)
