from snakescope.evaluate import evaluate_run
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
evaluate_run(
    predict_dir=snakemake.input.predictions,
    arrays_store=snakemake.input.arrays,
    samples_tsv=snakemake.input.samples,
    split_json=snakemake.input.split,
    fingerprint_json=snakemake.input.fingerprint,
    out_dir=str(snakemake.output.figures).rsplit("/", 1)[0],
    run_info={
        "dataset": snakemake.wildcards.dataset,
        "model": snakemake.wildcards.model,
        "seed": int(snakemake.wildcards.seed),
    },
)
