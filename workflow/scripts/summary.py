from snakescope.logs import log_to_file
from snakescope.summary import write_leaderboard

log_to_file(snakemake.log[0])
runs = [
    {
        "metrics_json": metrics,
        "card_json": card,
        "predict_dir": predictions,
        "fingerprint_json": fingerprint,
        "uncertainty_json": uncertainty or None,
        "train_benchmark": benchmark,
        "config_hash": config_hash,
    }
    for metrics, card, predictions, fingerprint, uncertainty, benchmark, config_hash in zip(
        snakemake.input.metrics,
        snakemake.input.cards,
        snakemake.input.predictions,
        snakemake.input.fingerprints,
        snakemake.params.uncertainty_summaries,
        snakemake.params.train_benchmarks,
        snakemake.params.config_hashes,
        strict=True,
    )
]
write_leaderboard(
    runs,
    table_out=snakemake.output.table,
    mean_out=snakemake.output.mean,
    ranking_out=snakemake.output.ranking,
    sqlite_out=snakemake.output.sqlite,
    bars_out=snakemake.output.bars,
    tradeoff_out=snakemake.output.tradeoff,
)
