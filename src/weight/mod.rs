//! Everything of an EAST round between sampling and training that needs no model: grading and
//! clustering completions ([`cluster`]), turning uncertainty into weights ([`mapping`]) and
//! building the weighted training set ([`trainset`]).

pub mod cluster;
pub mod mapping;
pub mod trainset;

pub use cluster::{cluster_file, cluster_question, ClusterBy, ClusterOptions, ClusterSummary};
pub use mapping::{map_weights, Mapping, MappingError, Metric};
pub use trainset::{pick_pair, weight_files, DropReason, Loss, PairStrategy, TrainRow, WeightOptions, WeightSummary};
