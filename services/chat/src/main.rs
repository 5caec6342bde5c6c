fn main() -> anyhow::Result<()> {
    nwd_runtime::service::main(nwd_chat::run)
}
