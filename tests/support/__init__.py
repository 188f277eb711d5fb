"""The test harness: doubles for what cannot run here (named as such), the fault-matrix
harness, generated corpora. Not part of the wheel."""
