"""Core log records reach the node's rclpy logger without taking them from other threads."""
import logging
import threading

from mspr_ros.ros.logs import core_logs_to


class _RecordingRosLogger:
    """Stands in for an rclpy logger: keeps (severity, text)."""

    def __init__(self):
        self.lines = []

    def warning(self, text):
        self.lines.append(('warn', text))

    def error(self, text):
        self.lines.append(('error', text))

    def info(self, text):
        self.lines.append(('info', text))


def test_a_configuring_thread_forwards_its_records_and_leaves_other_threads_alone(caplog):
    """Another thread's warnings propagate as ever and are not forwarded to the node.

    One thread configures (inside core_logs_to) while another thread logs.
    """
    ros_logger = _RecordingRosLogger()
    inside, other_logged = threading.Event(), threading.Event()

    def configure():
        with core_logs_to(ros_logger):
            inside.set()
            other_logged.wait(timeout=10.0)
            logging.getLogger('mspr_ros.localizer').warning('configuring thread warns')
            logging.getLogger('mspr_ros.localizer').error('configuring thread fails')

    with caplog.at_level(logging.WARNING, logger='mspr_ros'):
        worker = threading.Thread(target=configure)
        worker.start()
        assert inside.wait(timeout=10.0)
        logging.getLogger('mspr_ros.localizer').warning('another thread warns')
        other_logged.set()
        worker.join(timeout=10.0)
        logging.getLogger('mspr_ros.localizer').warning('after the block')

    assert ros_logger.lines == [('warn', 'configuring thread warns'),
                                ('error', 'configuring thread fails')]
    assert [record.getMessage() for record in caplog.records] == [
        'another thread warns', 'configuring thread warns', 'configuring thread fails',
        'after the block']
    assert logging.getLogger('mspr_ros').handlers == []
