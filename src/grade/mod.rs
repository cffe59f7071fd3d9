//! Answer extraction, normalisation and equivalence (filled in by the grading work).
