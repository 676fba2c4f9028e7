"""The seed ranges of the generated scenes: which seeds train, which tune, which test.

Training (the network and the grounding head) draws its scenes below TEST_FIRST_SEED. The
held-out test split starts there; the validation split, on which settings are chosen before the
test split is measured, starts at VALIDATION_FIRST_SEED.
"""

TEST_FIRST_SEED = 1_000_000
VALIDATION_FIRST_SEED = 2_000_000
