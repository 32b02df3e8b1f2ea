from snakescope.apply import apply_model, training_data
from snakescope.logs import log_to_file

log_to_file(snakemake.log[0])
settings = snakemake.params.settings
apply_model(
    source=snakemake.input.model,
    images_dir=settings["images"],
    out_dir=snakemake.output.results,
    training=training_data(
        snakemake.input.get("arrays"),
        snakemake.input.get("samples"),
        snakemake.input.get("split"),
    ),
    mc_samples=settings["mc_samples"],
    threshold=settings["threshold"],
    device=settings["device"],
    threads=snakemake.threads,
    seed=settings["seed"],
)
