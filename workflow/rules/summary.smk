from snakescope.provenance import config_hash


rule summary:
    input:
        metrics=get_evaluated("evaluate/metrics.json"),
        cards=get_evaluated("train/model_card.json"),
        predictions=get_evaluated("predict"),
        fingerprints=lambda w: [
            f"results/{d}/convert/fingerprint.json" for d, m, s in get_evaluated_runs()
        ],
        uncertainty=get_evaluated("uncertainty", "uncertainty"),
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
        uncertainty_summaries=get_uncertainty_summaries,
        # read, not declared as inputs: Snakemake writes them alongside the train job's outputs
        train_benchmarks=lambda w: [
            f"benchmarks/{d}/{m}/seed{s}/train.tsv" for d, m, s in get_evaluated_runs()
        ],
        config_hashes=lambda w: [
            config_hash(DATASETS[d], m, s) for d, m, s in get_evaluated_runs()
        ],
    script:
        "../scripts/summary.py"


# Adds this workflow's runs to the results library (a file outside results/, shared by every
# workflow run in this directory) that `recommend` learns from; the output lists the rows added.
rule library:
    input:
        table=rules.summary.output.table,
        fingerprints=lambda w: sorted(
            {
                f"results/{d}/convert/fingerprint.json"
                for d, m, s in get_evaluated_runs()
            }
        ),
    output:
        rows="results/summary/library_rows.tsv",
    log:
        "logs/library.log",
    conda:
        "../../envs/io.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        library=next(
            (s["results_library"] for s in DATASETS.values() if s["results_library"]),
            None,
        ),
    script:
        "../scripts/library.py"
