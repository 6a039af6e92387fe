//! Loading the real data sets in `../shared/data/` (beside the repository) for the trainer's
//! integration tests.

use std::path::PathBuf;

use mlops_domain::data::{Dataset, TargetPolicy, load_csv};
use mlops_domain::schema::Schema;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A shipped schema and its data set, validated.
pub fn load(name: &str) -> (Schema, Dataset) {
    let schema = Schema::from_file(&repo().join(format!("data/{name}.schema.toml"))).unwrap();
    let file = repo()
        .join("../shared/data")
        .join(&schema.source.as_ref().unwrap().file);
    assert!(
        file.exists(),
        "{} is missing: the shared data sets must sit beside the repository",
        file.display()
    );
    let (data, report) = load_csv(&file, &schema, TargetPolicy::Required).unwrap();
    assert!(report.is_valid());
    (schema, data)
}
