from tierfs.control.cli import main

main()
