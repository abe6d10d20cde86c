from dpsr_tf.cli.main import run

run()
