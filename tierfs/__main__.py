from tierfs.cli import main

main()
