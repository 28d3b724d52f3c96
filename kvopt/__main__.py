from kvopt.cli import main

main()
