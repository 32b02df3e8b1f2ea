from snakescope.provenance import config_hash

EVALUATED_RUNS = [run for run in get_runs() if DATASETS[run[0]]["evaluate"]]


rule summary:
    input:
        metrics=get_run_outputs("evaluate/metrics.json", only_if="evaluate"),
        cards=get_run_outputs("train/model_card.json", only_if="evaluate"),
        predictions=get_run_outputs("predict", only_if="evaluate"),
        fingerprints=[
            f"results/{d}/convert/fingerprint.json" for d, m, s in EVALUATED_RUNS
        ],
        uncertainty=[
            f"results/{d}/{m}/seed{s}/uncertainty"
            for d, m, s in EVALUATED_RUNS
            if DATASETS[d]["uncertainty"]
        ],
    output:
        table=report(
            "results/summary/leaderboard.tsv",
            caption="../report/leaderboard.rst",
            category="Summary",
            labels={"table": "leaderboard, one row per run"},
        ),
        mean=report(
            "results/summary/leaderboard_mean.tsv",
            caption="../report/leaderboard.rst",
            category="Summary",
            labels={"table": "leaderboard, mean ± std over seeds"},
        ),
        ranking=report(
            "results/summary/ranking.tsv",
            caption="../report/leaderboard.rst",
            category="Summary",
            labels={"table": "ranking across datasets"},
        ),
        sqlite="results/summary/leaderboard.sqlite",
        bars=report(
            "results/summary/bars.png",
            caption="../report/summary.rst",
            category="Summary",
            labels={"figure": "headline metric per model"},
        ),
        tradeoff=report(
            "results/summary/tradeoff.png",
            caption="../report/tradeoff.rst",
            category="Summary",
            labels={"figure": "accuracy versus inference time"},
        ),
    log:
        "logs/summary.log",
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        uncertainty_summaries=get_uncertainty_summaries(EVALUATED_RUNS),
        # read, not declared as inputs: Snakemake writes them alongside the train job's outputs
        train_benchmarks=[
            f"benchmarks/{d}/{m}/seed{s}/train.tsv" for d, m, s in EVALUATED_RUNS
        ],
        config_hashes=[config_hash(DATASETS[d], m, s) for d, m, s in EVALUATED_RUNS],
    script:
        "../scripts/summary.py"
