"""Overrides that make a training run take seconds on CPU, shared by the tests (tests/conftest.py)
and the benchmarks that run nscfate on tiny data (code_map.py)."""

#: A tiny synthetic store, read in-process, with a fixed batch size (not the recipe's auto) and
#: 20 bootstrap rounds for the fate-fraction intervals (200 by default), no Grad-CAM gallery.
TINY_DATA = [
    "data.synthetic.cells_per_group=12",
    "data.synthetic.batches_per_group=4",
    "data.synthetic.control_batches_per_group=null",  # a preset's 168 cultures would not fit 12 cells
    "data.synthetic.control_cells_per_group=null",  # nor would it need a preset's 840 control cells
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.batch_size=32",
    "quantify.n_boot=20",
    "cam.per_group=0",
]
