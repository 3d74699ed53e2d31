# The paper's Table 1 and Table 2 beside ours (unet/tables.py), and the time each rule took.


rule tables:
    input:
        scores=run_paths("results/scores/{dataset}/{run}/seed{seed}.json"),
        runs=run_paths("results/models/{dataset}/{run}/seed{seed}/run.json"),
    output:
        # The report shows the HTML pages; it only offers the CSV files to download.
        table1=report(
            "results/tables/table1.html",
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "Table 1 (ISBI 2012)"},
        ),
        table1_csv=report(
            "results/tables/table1.csv",
            caption="../report/table1.rst",
            category="Tables",
            labels={"table": "Table 1 (ISBI 2012), CSV"},
        ),
        table1_md="results/tables/table1.md",
        table2=report(
            "results/tables/table2.html",
            caption="../report/table2.rst",
            category="Tables",
            labels={"table": "Table 2 (cell tracking)"},
        ),
        table2_csv=report(
            "results/tables/table2.csv",
            caption="../report/table2.rst",
            category="Tables",
            labels={"table": "Table 2 (cell tracking), CSV"},
        ),
        table2_md="results/tables/table2.md",
    log:
        "results/logs/tables/tables.log",
    benchmark:
        "results/benchmarks/tables/tables.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        out=subpath(output.table1, parent=True),
        note=settings_note(),
        snakemake=SNAKEMAKE_VERSION,
    shell:
        "unet tables {input.scores:q} --runs {input.runs:q} --out {params.out:q}"
        " --settings-note {params.note:q} --snakemake-version {params.snakemake} > {log:q} 2>&1"


# Last: the wall time of every job of the run, summed per rule (Snakemake's benchmark files).
rule rule_times:
    input:
        final_targets(),
    output:
        table="results/tables/rule_times.csv",
        figure=report(
            "results/tables/rule_times.png",
            caption="../report/rule_times.rst",
            category="Run time",
        ),
    log:
        "results/logs/rule_times/rule_times.log",
    benchmark:
        "results/benchmarks/rule_times/rule_times.tsv"
    conda:
        "../../envs/unet.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        out=subpath(output.table, parent=True),
        # Benchmark files of data sets not in this run (an earlier run's) stay out.
        others=[d for d in DATASETS if d not in EXPERIMENTS],
    shell:
        "unet tables --rule-times results/benchmarks --exclude-datasets {params.others:q}"
        " --out {params.out:q} > {log:q} 2>&1"
