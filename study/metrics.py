"""Metric names and trial statuses, defined once: the trainer reports them, the scheduler ranks by them, the report reads them."""

EPOCH = "epoch"
LR = "lr"
TRAIN_PPL = "train_ppl"
VALID_PPL = "valid_ppl"
TEST_PPL = "test_ppl"
GRAD_NORM_MEAN = "grad_norm_mean"
GRAD_NORM_P50 = "grad_norm_p50"
GRAD_NORM_P90 = "grad_norm_p90"
GRAD_NORM_MAX = "grad_norm_max"
CLIP_FRACTION = "clip_fraction"
WORDS_PER_SEC = "words_per_sec"
EPOCH_SECONDS = "epoch_seconds"
DIVERGED = "diverged"

# The gradient-norm summary of one epoch, as the clipper computes it.
GRAD_METRICS = (GRAD_NORM_MEAN, GRAD_NORM_P50, GRAD_NORM_P90, GRAD_NORM_MAX, CLIP_FRACTION)

# Every epoch's report has these; the last report of a finished run adds TEST_PPL.
EPOCH_METRICS = (
    EPOCH,
    LR,
    TRAIN_PPL,
    VALID_PPL,
    *GRAD_METRICS,
    WORDS_PER_SEC,
    EPOCH_SECONDS,
    DIVERGED,
)

# The trainable adds it to every report: True for an epoch the trial took from a shared prefix
# (study/sweep/prefix.py) instead of training it; its seconds were spent by the trial that trained it.
SHARED_PREFIX = "shared_prefix"
# And, in each report and checkpoint after a trial took a stored prefix, how many epochs it took:
# a resumed sweep's driver sees only each trial's last report (study/sweep/progress.py).
SHARED_EPOCHS = "shared_prefix_epochs"

# And where the epoch trained: Ray's node id (nodes on one host share an IP), the device type, the
# CPU's model and, on a GPU, the GPU's name. Processors differ in the last bits of their results.
NODE_ID, DEVICE, CPU, GPU = "node_id", "device", "cpu", "gpu"
MACHINE = (NODE_ID, DEVICE, CPU, GPU)

# What ASHA and the report rank trials by.
OBJECTIVE = VALID_PPL
MODE = "min"

# A trial's status: the `status` column of trials.parquet, the counts in summary.md and the live
# view's trials, with what each means (study.report.collect decides it from Ray's state). The metric
# DIVERGED names the status of a trial whose loss became NaN or infinite.
COMPLETED = "completed"
STOPPED_EARLY = "stopped_early"
ERROR = "error"
RUNNING = "running"
PENDING = "pending"
STATUSES = {
    COMPLETED: "trained every epoch",
    STOPPED_EARLY: "ASHA (or the trainable) ended it sooner",
    DIVERGED: "its loss became NaN or infinite (it stops at once)",
    ERROR: "Ray marked it failed after its retries, or its entry in Ray's state cannot be read",
    RUNNING: "started and not finished (still running, or interrupted)",
    PENDING: "not started",
}
FINISHED = (COMPLETED, STOPPED_EARLY, DIVERGED, ERROR)
UNFINISHED = (RUNNING, PENDING)
RANKED = (COMPLETED, STOPPED_EARLY)  # the trials whose perplexity enters a setting's statistics
