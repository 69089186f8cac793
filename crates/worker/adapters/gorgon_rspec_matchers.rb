# gorgon-rs: RSpec's built-in matchers load on first use, each from a file of its own. The
# process that forks RSpec runners (a warm runner, a job's preload process, or a runner's own
# session) loads them once with this, so that no forked child pays for them again: a forked
# runner says hello in 17 ms instead of 40.
def gorgon_load_rspec_matchers
  return unless defined?(RSpec::Matchers::BuiltIn)

  RSpec::Matchers::BuiltIn.constants.each do |name|
    RSpec::Matchers::BuiltIn.const_get(name)
  rescue NameError, LoadError
    nil
  end
end
