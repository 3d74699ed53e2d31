# U-Net (Ronneberger, Fischer & Brox, MICCAI 2015): from the data to Table 1 and Table 2.
#
#   snakemake --cores all                                  # the paper profile (GPU)
#   snakemake --cores all --configfile config/demo.yaml    # the embedded demo, minutes on a CPU
#
# One file per stage under workflow/rules/; the work itself is in the `unet` package.


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/weightmap.smk"
