from snakescope.logs import log_to_file
from snakescope.predict import predict_dataset

log_to_file(snakemake.log[0])
predict_dataset(
    model_pt=snakemake.input.model,
    arrays_store=snakemake.input.arrays,
    samples_tsv=snakemake.input.samples,
    split_json=snakemake.input.split,
    out_dir=snakemake.output.predictions,
    threshold=snakemake.params.settings["threshold"],
    device=snakemake.params.settings["device"],
    threads=snakemake.threads,
)
