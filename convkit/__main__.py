from convkit.cli import main

main()
