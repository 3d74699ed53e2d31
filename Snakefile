# U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): from the data to Table 1 and Table 2.
#
#   snakemake                                  # the paper profile (GPU), profiles/default
#   snakemake --configfile config/demo.yaml    # the embedded demo, minutes on a CPU
#   snakemake --report results/report.html     # tables, curves and figures in one page
#
# One file per stage under workflow/rules/; the work itself is in the `unet` package.


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/weightmap.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        final_targets(),
        "results/tables/rule_times.csv",
