# gorgon-rs warm runner for the Ruby built-in runners (docs/runner-protocol.md, "Warm runners"):
# a listener keeps this process between jobs. It has loaded Ruby and the test framework and
# nothing of any project. A worker connects to its Unix socket and sends its runner's stdin,
# stdout and stderr (SCM_RIGHTS) with one JSON line: the job's workspace, environment and the
# adapter script to run. This process forks; the child takes those as its own and runs the
# adapter as `ruby SCRIPT` would, in a process group of its own. This process answers
# "pid N", then "status RAW" (the raw wait status) when the child ends, and kills the child's
# group if the worker's connection closes first. Usage: ruby gorgon_warm.rb KIND SOCKET; it
# prints "ready" once it serves, and ends when its stdin closes and its children have ended.
#
# `ruby gorgon_warm.rb preload SOCKET CLASS_FILE [KIND...]` is a job's Ruby preload process
# instead: started in the workspace with the job's environment, it loads the frameworks of
# the KINDs and Gorgon's callbacks class CLASS_FILE and runs its before_creating_workers, so
# that the job's runners fork with what it loaded; when it ends it runs
# after_creating_workers. A callback that raises is printed (class, message, backtrace) and
# the exit status is 1.
require 'socket'
require 'json'
require 'set'
require_relative 'gorgon_rspec_matchers'

# Loads a runner kind's framework.
def gorgon_warm_require(kind)
  case kind
  when 'rspec'
    require 'rspec/core'
    %w[rspec/expectations rspec/mocks rspec/core/formatters/exception_presenter].each do |library|
      require library
    rescue LoadError
      nil
    end
    # Loaded once here, for every forked runner (gorgon_rspec.rb loads them too, for a
    # runner booted without a warm runner; here they are loaded already).
    gorgon_load_rspec_matchers
  when 'minitest'
    require 'minitest'
  else
    abort "gorgon_warm.rb: unknown runner kind #{kind.inspect}"
  end
end

# Runs a moment of the callbacks class with stdout sent to stderr (stdout says "ready").
def gorgon_warm_callback(moment)
  Gorgon.with_stdout_on_stderr { Gorgon.run_callback(moment) }
rescue Exception => e # rubocop:disable Lint/RescueException
  warn Gorgon.describe(e)
  exit!(1)
end

kind, socket_path, class_file, *preload_kinds = ARGV
preload = kind == 'preload'
if preload
  preload_kinds.each do |preload_kind|
    gorgon_warm_require(preload_kind)
  rescue LoadError
    nil # the runner reports it when it loads the framework
  end
  require_relative 'gorgon_callbacks'
  begin
    Gorgon.load_callbacks(class_file)
  rescue Exception => e # rubocop:disable Lint/RescueException
    warn Gorgon.describe(e)
    exit!(1)
  end
  gorgon_warm_callback(:before_creating_workers)
else
  gorgon_warm_require(kind)
end

module GorgonWarm
  MAX_REQUEST = 1 << 20

  # Reads a fork request: the three descriptors and a JSON line.
  def self.read_request(conn)
    data, _, _, *controls = conn.recvmsg(MAX_REQUEST, 0, 1024, scm_rights: true)
    ios = controls.flat_map { |control| control.unix_rights || [] }
    data = data.to_s
    data << conn.readpartial(MAX_REQUEST) until data.include?("\n") || data.bytesize > MAX_REQUEST
    [JSON.parse(data.lines.first), ios]
  end

  # In the forked child: become the runner the request describes.
  def self.become(request, ios)
    Process.setpgid(0, 0)
    STDIN.reopen(ios[0])
    STDOUT.reopen(ios[1])
    STDERR.reopen(ios[2])
    ios.each(&:close)
    Dir.chdir(request.fetch('cwd'))
    ENV.replace(request.fetch('env'))
    script = request.fetch('script')
    $PROGRAM_NAME = script
    ARGV.replace(request['args'] || [])
    load script
    exit!(0)
  end
end

server = UNIXServer.new(socket_path)
# A child's end wakes the loop at once (its group stays non-empty until it is reaped).
wake_reader, wake_writer = IO.pipe
trap('CHLD') do
  wake_writer.write_nonblock('.')
rescue IO::WaitWritable, IOError
  nil
end
STDOUT.puts('ready')
STDOUT.flush
children = {} # pid => connection
owners = {} # connection => pid
closing = false
loop do
  watched = [wake_reader, *owners.keys]
  watched.push(server, STDIN) unless closing
  readable, = IO.select(watched, nil, nil, 0.2)
  loop do
    reaped = begin
      Process.wait2(-1, Process::WNOHANG)
    rescue Errno::ECHILD
      nil
    end
    break unless reaped

    pid, status = reaped
    conn = children.delete(pid) or next
    owners.delete(conn)
    begin
      conn.puts("status #{status.to_i}")
    rescue IOError, SystemCallError
      nil
    end
    conn.close
  end
  Array(readable).each do |io|
    if io.equal?(wake_reader)
      begin
        wake_reader.read_nonblock(4096)
      rescue IO::WaitReadable, EOFError
        nil
      end
    elsif io.equal?(STDIN)
      begin
        STDIN.read_nonblock(4096)
      rescue EOFError, IOError
        closing = true
        server.close
      rescue IO::WaitReadable
        nil
      end
    elsif io.equal?(server)
      next if closing

      conn = server.accept
      begin
        request, ios = GorgonWarm.read_request(conn)
        raise 'expected three descriptors' unless ios.size == 3
      rescue StandardError => e
        begin
          conn.puts("error #{e.message}")
        rescue IOError, SystemCallError
          nil
        end
        conn.close
        ios&.each(&:close)
        next
      end
      STDOUT.flush
      STDERR.flush
      pid = fork do
        trap('CHLD', 'DEFAULT')
        wake_reader.close
        wake_writer.close
        server.close
        owners.each_key(&:close)
        conn.close
        GorgonWarm.become(request, ios)
      end
      begin
        Process.setpgid(pid, pid)
      rescue SystemCallError
        nil # the child did it first, or has ended already
      end
      ios.each(&:close)
      conn.puts("pid #{pid}")
      children[pid] = conn
      owners[conn] = pid
    else
      # Anything from the worker, or its end: the worker is gone, so its runner goes too.
      pid = owners[io]
      gone = begin
        io.read_nonblock(4096)
        false
      rescue IO::WaitReadable
        false
      rescue EOFError, IOError, SystemCallError
        true
      end
      if gone && pid
        begin
          Process.kill(:KILL, -pid)
        rescue SystemCallError
          nil
        end
        owners.delete(io)
        children[pid] = io # its status is still reaped; the write then fails quietly
      end
    end
  end
  break if closing && children.empty?
end
begin
  File.unlink(socket_path)
rescue SystemCallError
  nil
end
gorgon_warm_callback(:after_creating_workers) if preload
exit!(0)
