from filterd.daemon import main

main()
