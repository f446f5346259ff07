fn main() -> anyhow::Result<()> {
    cairn::cli::main()
}
