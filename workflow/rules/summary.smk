EVALUATED_RUNS = [run for run in get_runs() if DATASETS[run[0]]["evaluate"]]


rule summary:
    input:
        metrics=[
            f"results/{d}/{m}/seed{s}/evaluate/metrics.json" for d, m, s in EVALUATED_RUNS
        ],
        cards=[f"results/{d}/{m}/seed{s}/train/model_card.json" for d, m, s in EVALUATED_RUNS],
        uncertainty=[
            f"results/{d}/{m}/seed{s}/uncertainty"
            for d, m, s in EVALUATED_RUNS
            if DATASETS[d]["uncertainty"]
        ],
    output:
        table=report(
            "results/summary/metrics.tsv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        figure=report(
            "results/summary/metrics.png",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/summary.log",
    params:
        uncertainty_summaries=get_uncertainty_summaries(EVALUATED_RUNS),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../../envs/io.yaml"
    script:
        "../scripts/summary.py"
