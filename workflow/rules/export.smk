rule export:
    input:
        model=rules.train.output.model,
        arrays=rules.convert.output.arrays,
        split=rules.split.output.split,
        metrics=get_metrics_if_evaluated,
    output:
        package="results/{dataset}/{model}/seed{seed}/export/package.zip",
        # the cover stands for the package in the report (a package of tens of MB would bloat report.html)
        cover=report(
            "results/{dataset}/{model}/seed{seed}/export/cover.png",
            caption="../report/export.rst",
            category="Export",
            labels={"dataset": "{dataset}", "model": "{model}", "seed": "{seed}"},
        ),
        onnx="results/{dataset}/{model}/seed{seed}/export/model.onnx",
        record="results/{dataset}/{model}/seed{seed}/export/export.json",
    log:
        "logs/{dataset}/{model}/seed{seed}/export.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        settings=get_settings("export"),
    script:
        "../scripts/export.py"
