fn main() {
    println!("cargo:rerun-if-env-changed=XGBOOST_LIB_DIR");
}
